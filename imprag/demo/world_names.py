"""Invented names for the synthetic world: words built from syllables, never looked up anywhere, so a
closed-book model cannot know the facts attached to them.

Every surface form handed out is unique across the whole world (case-insensitive), so an answer string
names exactly one thing. `similar()` makes the near-miss spellings of distractor entities.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# Syllable parts; repeated entries weight the draw (plain vowels and open syllables are commoner).
_ONSETS = (
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "l", "m", "m", "n", "n", "p", "r", "r",
    "s", "s", "sh", "st", "t", "t", "th", "tr", "v", "v", "z", "y", "w", "", "",
)  # fmt: skip
_VOWELS = ("a", "a", "a", "e", "e", "e", "i", "i", "o", "o", "u", "ai", "ei", "ou", "ia")
_CODAS = ("", "", "", "", "", "", "n", "n", "r", "r", "l", "l", "s", "m", "th", "nd", "rn", "st", "v")
_PLAIN_VOWELS = "aeiou"

_SUFFIX = {
    "given_f": ("a", "ia", "ene", "ine", "ra", "elle", "ys", "a", "eth"),
    "given_m": ("o", "an", "en", "ir", "us", "ard", "il", "as", "ek"),
    "surname": ("is", "ov", "ard", "en", "ley", "stad", "ane", "ez", "ur", "ock", "ell", "ani"),
    "city": ("ora", "eth", "mar", "ond", "ica", "ava", "holm", "ent", "iel", "a", ""),
    "country": ("ia", "ania", "ara", "istan", "mark", "ova", "land", "ey", "esh"),
    "river": ("a", "e", "en", "", "is", "ar"),
    "language": ("ic", "ese", "i", "ish", "an", "ol"),
    "currency": ("", "o", "et", "ar", "ine"),
    "root": ("", "", "", "el", "an", "or", "ix", "ane"),
}
# awkward spellings to skip: three vowels or three consonants in a row, a doubled vowel, "w" inside a word
_AWKWARD = re.compile(r"[aeiou]{3}|[^aeiouy]{3}|aa|ii|uu|ee|oo|.w|yi|iy", re.IGNORECASE)
_CITY_PREFIX = ("Port", "Upper", "Lower", "North", "East", "Saint", "Fort", "New")
_REGION_KIND = ("Peninsula", "Highlands", "Coast", "Basin", "Archipelago", "Plateau", "Lowlands", "Steppe")


class NameMaker:
    """Deterministic source of unique invented names (one `random.Random` drives every draw)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._used: set[str] = set()  # lowercase surface forms already handed out

    def reserve(self, name: str) -> bool:
        """Claim `name`; False when something already has it."""
        key = name.lower()
        if key in self._used:
            return False
        self._used.add(key)
        return True

    def _syllable(self) -> str:
        r = self.rng
        return r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS)

    def root(self, syllables: tuple[int, int] = (2, 2)) -> str:
        """A bare word such as "Velmor" (not reserved: building block for longer names)."""
        r = self.rng
        while True:
            word = "".join(self._syllable() for _ in range(r.randint(*syllables)))
            # keep words pronounceable-ish and of a sane length; no triple letters
            if 3 <= len(word) <= 7 and not any(
                word[i] == word[i + 1] == word[i + 2] for i in range(len(word) - 2)
            ):
                return word.capitalize()

    def word(self, kind: str, syllables: tuple[int, int] = (1, 2), reserve: bool = True) -> str:
        """A root plus a kind-flavoured ending ("Velmorania" for a country); unique when `reserve`."""
        for _ in range(10_000):
            w = self.root(syllables)
            suffix = self.rng.choice(_SUFFIX[kind])
            if suffix and w[-1] in _PLAIN_VOWELS and suffix[0] in _PLAIN_VOWELS:
                w = w[:-1]
            w = (w + suffix).capitalize()
            if not 4 <= len(w) <= 10 or _AWKWARD.search(w):
                continue
            if not reserve or self.reserve(w):
                return w
        raise RuntimeError(f"ran out of invented {kind} names")  # unreachable at supported sizes

    def city(self) -> str:
        if self.rng.random() < 0.12:
            for _ in range(1000):
                name = f"{self.rng.choice(_CITY_PREFIX)} {self.word('city', reserve=False)}"
                if self.reserve(name):
                    return name
        return self.word("city")

    def region(self) -> str:
        for _ in range(1000):
            name = f"{self.word('root', reserve=False)} {self.rng.choice(_REGION_KIND)}"
            if self.reserve(name):
                return name
        raise RuntimeError("ran out of region names")

    def unique(self, make: Callable[[], str], tries: int = 1000) -> str:
        """Call `make()` until it returns a name nobody has; reserve and return it."""
        for _ in range(tries):
            name = make()
            if self.reserve(name):
                return name
        raise RuntimeError("ran out of unique names")

    def similar(self, name: str, positions: tuple[int, ...], tries: int = 200) -> str | None:
        """A near-miss spelling of `name`: one vowel changed in one of the invented words at `positions`
        (word indices), reserved; None if no free spelling turns up.

        "Elvara Montis" -> "Elvira Montis": the distractor twin a retriever must not confuse.
        """
        words = name.split(" ")
        for _ in range(tries):
            i = self.rng.choice(positions)
            w = words[i]
            spots = [j for j, ch in enumerate(w) if ch in _PLAIN_VOWELS and j > 0]
            if not spots:
                continue
            j = self.rng.choice(spots)
            new = self.rng.choice([v for v in _PLAIN_VOWELS if v != w[j]])
            respelled = w[:j] + new + w[j + 1 :]
            if _AWKWARD.search(respelled):
                continue
            cand = " ".join([*words[:i], respelled, *words[i + 1 :]])
            if self.reserve(cand):
                return cand
        return None


def initials(name: str) -> str:
    """ "Velmora Institute of Optics" -> "VIO" (short words such as "of"/"the" are dropped)."""
    return "".join(
        w[0].upper() for w in name.split() if w[:1].isalpha() and w.lower() not in ("of", "the", "for", "and")
    )


def article(word: str) -> str:
    """ "a" or "an" before `word` (by its first letter; good enough for the occupations used here)."""
    return "an" if word[:1].lower() in "aeiou" else "a"
