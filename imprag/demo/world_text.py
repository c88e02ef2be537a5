"""Wikipedia-like passages for the synthetic world: one per entity, 40-90 words, every fact it states
written with one of several templates so that the surface text varies from passage to passage.

A template is (text, relations it states). The intro states one to three facts; each remaining fact gets
a sentence; neutral filler sentences bring the passage to length. Only facts that made it into the text
are recorded in `Entity.shown`, and questions are asked about those alone.
"""

from __future__ import annotations

import random

from imprag.demo.world_graph import Entity, World
from imprag.demo.world_names import article

MIN_WORDS, MAX_WORDS = 40, 90

T = tuple[str, tuple[str, ...]]

INTROS: dict[str, list[T]] = {
    "person": [
        ("{n} (born {birth_year}) {is} {a_occupation}.", ("birth_year", "occupation")),
        ("{n} {is} {a_occupation} who was born in {birth_year}.", ("birth_year", "occupation")),
        (
            "{n} (born {birth_year} in {born_in}) {is} {a_occupation}.",
            ("birth_year", "born_in", "occupation"),
        ),
        (
            "Born in {born_in} in {birth_year}, {n} {is} {a_occupation}.",
            ("born_in", "birth_year", "occupation"),
        ),
        (
            "{n} {is} {a_occupation} from {citizen_of}, born in {birth_year}.",
            ("occupation", "citizen_of", "birth_year"),
        ),
    ],
    "city": [
        ("{n} is a city in {located_in}.", ("located_in",)),
        ("{n} is a town in {located_in}.", ("located_in",)),
        ("{n} is a city in the {side} of {located_in}.", ("located_in",)),
        (
            "{n} is a {side}ern town of {located_in}, founded in {city_founded}.",
            ("located_in", "city_founded"),
        ),
        ("{n} is the capital and largest city of {capital_of}.", ("capital_of", "located_in")),
        (
            "{n}, the capital of {capital_of}, lies in the {side} of the country.",
            ("capital_of", "located_in"),
        ),
    ],
    "country": [
        ("{n} is a country in the {region}.", ("region",)),
        ("{n} is a sovereign state located in the {region}.", ("region",)),
        ("{n} is a small republic in the {region}.", ("region",)),
        ("{n} is a kingdom in the {region} whose capital is {capital}.", ("region", "capital")),
    ],
    "org": [
        ("{n} is a {kind_desc} based in {headquarters}.", ("headquarters",)),
        ("{n} ({acronym}) is a {kind_desc} headquartered in {headquarters}.", ("acronym", "headquarters")),
        (
            "{n} is a {kind_desc} in {headquarters}, founded in {org_founded}.",
            ("headquarters", "org_founded"),
        ),
        (
            "{n}, or {acronym}, is a {kind_desc} with its headquarters in {headquarters}.",
            ("acronym", "headquarters"),
        ),
        ("{n} is a {kind_desc} founded by {founded_by} in {org_founded}.", ("founded_by", "org_founded")),
    ],
    "work": [
        ("{n} is {a_work_year} {genre_noun} by {author}.", ("work_year", "genre", "author")),
        ("{n} is {a_genre_noun} {made_by} {author}.", ("genre", "author")),
        ("{n} is {a_noun} {made_by} {author}, {year_verb} {work_year}.", ("author", "work_year")),
        ("{n} is {a_genre_noun} that was {year_verb} {work_year}.", ("genre", "work_year")),
    ],
}

FACTS: dict[str, list[T]] = {
    "person": [
        ("{S} was born in {birth_year}.", ("birth_year",)),
        ("{S} {works} as {a_occupation}.", ("occupation",)),
        ("{S} was born in {born_in}.", ("born_in",)),
        ("{S} is a native of {born_in}.", ("born_in",)),
        ("{S} grew up in {born_in}, where {sp} was born.", ("born_in",)),
        ("{S} {is} a citizen of {citizen_of}.", ("citizen_of",)),
        ("{S} {holds} the citizenship of {citizen_of}.", ("citizen_of",)),
        ("{S} later became a citizen of {citizen_of}.", ("citizen_of",)),
        ("{S} studied at {educated_at}.", ("educated_at",)),
        ("{S} was educated at {educated_at}.", ("educated_at",)),
        ("{S} graduated from {educated_at}.", ("educated_at",)),
        ("After studying at {educated_at}, {sp} began {p} career.", ("educated_at",)),
        ("{S} {works} for {employer}.", ("employer",)),
        ("{S} {is} employed by {employer}.", ("employer",)),
        ("{S} later took a position at {employer}.", ("employer",)),
        ("{S} {is} married to {spouse}.", ("spouse",)),
        ("{P} spouse {is} {spouse}.", ("spouse",)),
        ("{S} married {spouse} at a young age.", ("spouse",)),
        ("{S} received the {award}.", ("award",)),
        ("{S} won the {award}.", ("award",)),
        ("{P} honours include the {award}.", ("award",)),
        ('{S} {is} widely known by the nickname "{nickname}".', ("nickname",)),
        ('Friends and colleagues call {o} "{nickname}".', ("nickname",)),
        ('{S} {is} often called "{nickname}" by admirers.', ("nickname",)),
    ],
    "city": [
        ("{S} lies in {located_in}.", ("located_in",)),
        ("{S} is the capital of {capital_of}.", ("capital_of",)),
        ("The city serves as the capital of {capital_of}.", ("capital_of",)),
        ("{S} was founded in {city_founded}.", ("city_founded",)),
        ("The settlement dates back to {city_founded}.", ("city_founded",)),
        ("{n} was established in {city_founded} as a trading post.", ("city_founded",)),
        ("The town received its charter in {city_founded}.", ("city_founded",)),
        ("The {river} River flows through the city.", ("river",)),
        ("{n} lies on the banks of the {river}.", ("river",)),
        ("The city grew up around a crossing of the {river}.", ("river",)),
        ("Its mayor is {mayor}.", ("mayor",)),
        ("{mayor} serves as the city's mayor.", ("mayor",)),
        ("The city is governed by mayor {mayor}.", ("mayor",)),
        ("{S} has a population of about {population}.", ("population",)),
        ("Around {population} people live there.", ("population",)),
        ("The city is home to roughly {population} residents.", ("population",)),
    ],
    "country": [
        ("{S} lies in the {region}.", ("region",)),
        ("Its capital is {capital}.", ("capital",)),
        ("The capital and seat of government is {capital}.", ("capital",)),
        ("The government sits in {capital}, the capital.", ("capital",)),
        ("The official language is {official_language}.", ("official_language",)),
        ("Most of its people speak {official_language}, the official language.", ("official_language",)),
        ("{official_language} is the country's official language.", ("official_language",)),
        ("The national currency is the {currency}.", ("currency",)),
        ("{S} uses the {currency} as its currency.", ("currency",)),
        ("Prices are given in the {currency}, the national currency.", ("currency",)),
        ("Its head of state is {head_of_state}.", ("head_of_state",)),
        ("{head_of_state} serves as head of state.", ("head_of_state",)),
        ("The current head of state is {head_of_state}.", ("head_of_state",)),
        ("{n} became independent in {independence}.", ("independence",)),
        ("{S} gained independence in {independence}.", ("independence",)),
        ("The country declared independence in {independence}.", ("independence",)),
    ],
    "org": [
        ("{S} was founded in {org_founded} by {founded_by}.", ("org_founded", "founded_by")),
        ("{founded_by} established it in {org_founded}.", ("founded_by", "org_founded")),
        ("{S} was founded by {founded_by}.", ("founded_by",)),
        ("Its founder was {founded_by}.", ("founded_by",)),
        ("{founded_by} set up the {kind_short} with a small group of partners.", ("founded_by",)),
        ("{S} was founded in {org_founded}.", ("org_founded",)),
        ("The {kind_short} opened in {org_founded}.", ("org_founded",)),
        ("{S} dates from {org_founded}.", ("org_founded",)),
        ("Its headquarters are in {headquarters}.", ("headquarters",)),
        ("The {kind_short} is based in {headquarters}.", ("headquarters",)),
        ("The {kind_short} is led by {leader}.", ("leader",)),
        ("{leader} heads the {kind_short}.", ("leader",)),
        ("Its director is {leader}.", ("leader",)),
        ("{S} is commonly abbreviated as {acronym}.", ("acronym",)),
        ("{S} is often known simply as {acronym}.", ("acronym",)),
    ],
    "work": [
        ("{S} was {made_by} {author}.", ("author",)),
        ("{author} {made} it in {work_year}.", ("author", "work_year")),
        ("{S} was {year_verb} {work_year}.", ("work_year",)),
        ("The {noun} first appeared in {work_year}.", ("work_year",)),
        ("Critics describe it as {a_genre_noun}.", ("genre",)),
        ("{S} is usually classed as {a_genre_noun}.", ("genre",)),
        ("The story is set in {set_in}.", ("set_in",)),
        ("{S} takes place in {set_in}.", ("set_in",)),
        ("The action unfolds in {set_in}.", ("set_in",)),
        ("{S} was {lang_verb} {work_language}.", ("work_language",)),
        ("{work_language} is the language of the original {noun}.", ("work_language",)),
        ("{S} was {pub_verb} by {publisher}.", ("publisher",)),
        ("{publisher} {pub_verb} the {noun}.", ("publisher",)),
    ],
}

FILLERS: dict[str, list[str]] = {
    "person": [
        "{P} early work attracted little attention.",
        "{S} {has} spoken about the influence of {p} teachers.",
        "{S} {has} received several regional honours.",
        "{P} papers are kept in a private collection.",
        "{S} travelled widely as a young adult.",
        "{S} {is} known for a careful, patient way of working.",
        "Several of {p} students later became well known.",
        "{S} wrote about {p} childhood in a short memoir.",
        "{P} later years were spent mostly in the countryside.",
        "{S} rarely gave interviews.",
        "{P} reputation grew slowly over several decades.",
        "A street in {p} home town bears {p} name.",
    ],
    "city": [
        "The old town is known for its covered markets.",
        "Tourism has grown in recent decades.",
        "A railway line links it to neighbouring towns.",
        "Its main square hosts a weekly fair.",
        "The climate is mild, with wet winters.",
        "Local industry includes weaving and boat building.",
        "Much of the historic centre was rebuilt after a great fire.",
        "The city is known for its stone bridges.",
        "Fishing was once the main source of income.",
        "Several churches date from the medieval period.",
        "A botanical garden lies on the edge of the city.",
    ],
    "country": [
        "The landscape ranges from coastal plains to high plateaus.",
        "Agriculture remains an important part of the economy.",
        "The country is governed by an elected assembly.",
        "Winters in the interior are long and cold.",
        "Mining and fishing employ much of the population.",
        "The national holiday falls in early spring.",
        "Several dialects are spoken in remote valleys.",
        "Rail links to neighbouring states were built in the nineteenth century.",
        "Its forests cover nearly a third of the land.",
        "The population is concentrated along the main river valleys.",
    ],
    "org": [
        "It has expanded steadily since its early years.",
        "It publishes an annual report.",
        "A new building was opened in recent years.",
        "Its archives are open to researchers.",
        "It employs several hundred people.",
        "The {kind_short} went through a difficult period after a change of leadership.",
        "Its early history is described in a commissioned chronicle.",
        "The {kind_short} has received support from private donors.",
        "Its logo was redesigned several times.",
        "It maintains close ties with similar bodies abroad.",
    ],
    "work": [
        "It received mixed reviews when it first appeared.",
        "A restored edition appeared decades later.",
        "Critics praised its unusual structure.",
        "It is now considered a minor classic.",
        "Its reception grew warmer over time.",
        "It was the subject of a long dispute over rights.",
        "The {noun} was largely forgotten for many years.",
        "Scholars have written extensively about its themes.",
        "An early draft survives in an archive.",
        "It influenced a number of younger artists.",
    ],
}

_NOUN = {"novel": "novel", "play": "play", "film": "film", "album": "album", "painting": "painting"}
_MADE_BY = {
    "novel": "written by",
    "play": "written by",
    "film": "directed by",
    "album": "recorded by",
    "painting": "painted by",
}
_MADE = {"novel": "wrote", "play": "wrote", "film": "directed", "album": "recorded", "painting": "painted"}
_YEAR_VERB = {"novel": "first published in", "play": "first staged in", "film": "released in", "album": "released in",
              "painting": "completed in"}  # fmt: skip
_LANG_VERB = {
    "novel": "written in",
    "play": "written in",
    "film": "made in",
    "album": "sung in",
    "painting": "titled in",
}
_PUB_VERB = {
    "novel": "published",
    "play": "published",
    "film": "produced",
    "album": "released",
    "painting": "sold",
}
_KIND_SHORT = {"university": "university", "company": "company", "newspaper": "newspaper", "museum": "museum",
               "orchestra": "orchestra", "institute": "institute"}  # fmt: skip
_SIDES = ("north", "south", "east", "west")


def work_phrases(kind: str, genre: str) -> dict[str, str]:
    """How a work of `kind` and `genre` is described ("a crime novel", "written by", ...)."""
    genre_noun = genre if kind == "play" else f"{genre} {_NOUN[kind]}"
    return {
        "noun": _NOUN[kind],
        "a_noun": f"{article(_NOUN[kind])} {_NOUN[kind]}",
        "made_by": _MADE_BY[kind],
        "made": _MADE[kind],
        "year_verb": _YEAR_VERB[kind],
        "lang_verb": _LANG_VERB[kind],
        "pub_verb": _PUB_VERB[kind],
        "genre_noun": genre_noun,
        "a_genre_noun": f"{article(genre_noun)} {genre_noun}",
    }


def display(name: str) -> str:
    """An organisation's name as it reads mid-sentence: "the University of X", "the X Philharmonic"."""
    if name.startswith("The ") or not (" of " in name or name.endswith(("Philharmonic", "Orchestra"))):
        return name
    return "the " + name


def _slots(e: Entity, world: World, rng: random.Random) -> dict[str, str]:
    """Format values shared by every sentence of `e`'s passage (facts plus derived phrases)."""
    s: dict[str, str] = {"n": e.name, **e.facts}
    for rel, i in e.refs.items():
        if world.entities[i].kind == "org":
            s[rel] = display(s[rel])
    if e.kind == "person":
        female = e.attrs["gender"] == "f"
        past = int(e.facts["birth_year"]) < 1935  # long-dead people are written about in the past tense
        s.update(
            sp="she" if female else "he",
            o="her" if female else "him",
            p="her" if female else "his",
            P="Her" if female else "His",
            a_occupation=f"{article(e.facts['occupation'])} {e.facts['occupation']}",
            **({"is": "was", "works": "worked", "holds": "held", "has": "had"} if past else
               {"is": "is", "works": "works", "holds": "holds", "has": "has"}),
        )  # fmt: skip
    elif e.kind == "city":
        s["side"] = rng.choice(_SIDES)
    elif e.kind == "org":
        s.update(kind_desc=e.attrs["kind_desc"], kind_short=_KIND_SHORT[e.attrs["org_kind"]])
    elif e.kind == "work":
        s.update(work_phrases(e.attrs["work_kind"], e.facts["genre"]))
        y = e.facts["work_year"]  # "an 1880 novel" (eighteen...), "a 1920 film"
        s["a_work_year"] = f"{'an' if y.startswith(('8', '11', '18')) else 'a'} {y}"
    return s


def _subject(e: Entity, slots: dict[str, str], rng: random.Random) -> str:
    """How a non-intro sentence names its subject: pronoun, short name, or full name."""
    if e.kind == "person":
        return rng.choice([slots["sp"].capitalize(), slots["sp"].capitalize(), e.attrs["surname"], e.name])
    noun = {"city": "The city", "country": "The country", "org": "The " + slots.get("kind_short", ""),
            "work": "The " + slots.get("noun", "")}[e.kind]  # fmt: skip
    return rng.choice(["It", "It", noun, e.name])


def _fill(template: str, e: Entity, slots: dict[str, str], rng: random.Random) -> str:
    text = template.format(S=_subject(e, slots, rng), **slots)
    return text[0].upper() + text[1:]


def _words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def render_passage(e: Entity, world: World, rng: random.Random) -> None:
    """Write `e.sentences` and `e.shown` (the relations the text states)."""
    slots = _slots(e, world, rng)
    has = e.facts.keys()
    intro = rng.choice([t for t in INTROS[e.kind] if all(r in has for r in t[1])])
    covered = set(intro[1])
    facts: list[tuple[str, tuple[str, ...]]] = []
    rest = [r for r in e.facts if r not in covered]
    rng.shuffle(rest)
    for rel in rest:
        if rel in covered:
            continue
        options = [
            t for t in FACTS[e.kind] if rel in t[1] and all(r in has and r not in covered for r in t[1])
        ]
        text, rels = rng.choice(options)
        facts.append((_fill(text, e, slots, rng), rels))
        covered.update(rels)
    first = _fill(intro[0], e, slots, rng)
    # too long (rare): drop whole fact sentences from the end; their facts go unstated
    while _words([first] + [f for f, _ in facts]) > MAX_WORDS - 4 and facts:
        _, rels = facts.pop()
        covered.difference_update(rels)
    body: list[str] = [f for f, _ in facts]
    fillers = [_fill(t, e, slots, rng) for t in rng.sample(FILLERS[e.kind], len(FILLERS[e.kind]))]
    extra = rng.random() < 0.5  # some passages carry one filler more than they need
    for f in fillers:
        n = _words([first, *body])
        if n >= MIN_WORDS and not extra:
            break
        if n >= MIN_WORDS:
            extra = False
        if n + len(f.split()) <= MAX_WORDS:
            body.insert(rng.randint(0, len(body)), f)
    e.sentences = [first, *body]
    e.shown = tuple(r for r in e.facts if r in covered)


def render_world(world: World, seed: int) -> None:
    """Render every passage (its own random stream, so task generation cannot change the text)."""
    rng = random.Random(f"world-text:{seed}")
    for e in world.entities:
        render_passage(e, world, rng)
