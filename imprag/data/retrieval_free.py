"""Retrieval-free training tasks built from plain passages, for a corpus that comes without them.

The synthetic world (imprag.demo.world_tasks) builds these from its own facts; any other corpus has only
passages and its training questions, so the same three tasks are derived from those:

    denoise   a passage with 1-3 phrases (capitalised names, numbers) replaced by [MASK] -> the passage
    nextsent  a passage's first sentences -> the sentence that follows them
    rc        a training question beside its gold passage (half the time with a distractor) -> its answer
    verify    a sentence naming the passage's title, as written (-> True) or with one name or number
              swapped for another passage's (-> False); the passage is the row's provenance, read by the
              middle layers in training (`SourceConfig.read_provenance`): FEVER's answer format, no FEVER data

Rows are KILT lines (`{"id", "input", "output": [{"answer"}]}`; verify adds `{"provenance"}`) that
`load_examples` reads with the task's template. Same passages, questions and seed -> the same rows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imprag.data.example import Example
from imprag.passage import passage_text

FREE_TASKS = ("rc", "denoise", "nextsent")
# tasks whose rows carry an evidence passage to read; apart from FREE_TASKS so that callers building
# those (the demo) keep their behaviour
EVIDENCE_TASKS = ("verify",)
MASK = "[MASK]"

# a sentence ends at . ! or ? followed by space and a capital, digit or opening quote/bracket
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
# a phrase worth masking: a run of capitalised words / numbers ("Elvara Montis", "1843", "New Velmora")
_PHRASE = re.compile(r"\b(?:[A-Z][\w'-]*|\d[\d,.]*\d|\d)(?:\s+(?:[A-Z][\w'-]*|\d[\d,.]*\d|\d))*")

Record = dict[str, Any]


def sentences(text: str) -> list[str]:
    """Split a passage into sentences (a simple rule: end punctuation, then a capital or digit)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _record(task: str, i: int, inp: Any, answer: str) -> Record:
    return {"id": f"{task}-train-{i:05d}", "input": inp, "output": [{"answer": answer}]}


def _phrases(title: str, text: str) -> list[tuple[int, int]]:
    """Spans of maskable phrases: not a sentence's first word, not in the title, occurring once."""
    starts = {0} | {m.end() for m in _SENTENCE_END.finditer(text)}
    out = []
    for m in _PHRASE.finditer(text):
        phrase = m.group()
        if m.start() in starts or phrase in title or text.count(phrase) != 1:
            continue
        out.append((m.start(), m.end()))
    return out


def denoise_rows(
    passages: Sequence[Mapping[str, Any]], seed: int = 0, limit: int | None = None
) -> list[Record]:
    """1-3 phrases of each passage masked; the answer is the passage as written."""
    rng = random.Random(f"free-task:denoise:{seed}")
    rows: list[Record] = []
    for p in passages:
        if limit is not None and len(rows) >= limit:
            break
        title, text = str(p.get("title") or ""), str(p.get("text") or "")
        spans = _phrases(title, text)
        if not spans:
            continue
        spans = sorted(rng.sample(spans, min(len(spans), rng.randint(1, 3))))
        masked, last = [], 0
        for a, b in spans:
            masked.append(text[last:a] + MASK)
            last = b
        masked.append(text[last:])
        inp = passage_text({"title": title, "text": "".join(masked)})
        rows.append(_record("denoise", len(rows), inp, passage_text({"title": title, "text": text})))
    return rows


def nextsent_rows(
    passages: Sequence[Mapping[str, Any]], seed: int = 0, limit: int | None = None
) -> list[Record]:
    """The first k sentences of a passage (k at random) in, sentence k+1 out."""
    rng = random.Random(f"free-task:nextsent:{seed}")
    rows: list[Record] = []
    for p in passages:
        if limit is not None and len(rows) >= limit:
            break
        s = sentences(str(p.get("text") or ""))
        if len(s) < 2:
            continue
        k = rng.randint(1, len(s) - 1)
        inp = passage_text({"title": p.get("title"), "text": " ".join(s[:k])})
        rows.append(_record("nextsent", len(rows), inp, s[k]))
    return rows


def rc_rows(
    questions: Sequence[Example],
    passages: Mapping[str, Mapping[str, Any]],
    seed: int = 0,
    limit: int | None = None,
) -> list[Record]:
    """Each question with an answer and a gold passage of `passages` (by id): {"context", "question"} in,
    its first answer out; half the time a random other passage sits before or after the gold one."""
    rng = random.Random(f"free-task:rc:{seed}")
    ids = list(passages)
    rows: list[Record] = []
    for ex in questions:
        if limit is not None and len(rows) >= limit:
            break
        gold = [p.passage_id for p in ex.provenance if p.passage_id is not None and p.passage_id in passages]
        if not ex.answers or not gold:
            continue
        context = [passage_text(passages[gold[0]])]
        if rng.random() < 0.5:
            other = rng.choice(ids)
            if other not in gold:
                context.insert(rng.randint(0, 1), passage_text(passages[other]))
        inp = {"context": "\n".join(context), "question": ex.input}
        rows.append(_record("rc", len(rows), inp, ex.answers[0]))
    return rows


def _shape(phrase: str) -> str:
    """The kind of a phrase: a number of its length (a year for a year), name (every word capitalised) or
    mixed."""
    words = phrase.split()
    if all(w[0].isdigit() for w in words):
        return f"number:{len(phrase)}"
    return "name" if all(w[0].isupper() for w in words) else "mixed"


def _phrase_pool(passages: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Every maskable phrase of the passages, distinct, in order of first appearance, by shape."""
    pool: dict[str, dict[str, None]] = {}
    for p in passages:
        text = str(p.get("text") or "")
        for a, b in _phrases(str(p.get("title") or ""), text):
            pool.setdefault(_shape(text[a:b]), {})[text[a:b]] = None
    return {shape: list(phrases) for shape, phrases in pool.items()}


def _swap_spans(title: str, sentence: str) -> list[tuple[int, int]]:
    """The sentence's maskable phrases that neither lie in nor contain the title."""
    return [(a, b) for a, b in _phrases(title, sentence) if title not in sentence[a:b]]


def _swap_one(
    rng: random.Random, title: str, sentence: str, text: str, pool: dict[str, list[str]]
) -> str | None:
    """`sentence` with one of its phrases replaced by a pool phrase of the same shape that the passage
    (`text`, `title`) does not contain; None when a few draws find none."""
    spans = _swap_spans(title, sentence)
    if not spans:
        return None
    a, b = rng.choice(spans)
    options = pool.get(_shape(sentence[a:b]), [])
    for _ in range(20 if options else 0):  # rejection: a large pool rarely offers this passage's own phrases
        new = rng.choice(options)
        if new not in text and new not in title:
            return sentence[:a] + new + sentence[b:]
    return None


_SUBJECT = {"It": "", "He": "", "She": "", "They": "", "Its": "'s", "His": "'s", "Her": "'s", "Their": "'s"}


def about_title(title: str, sentence: str) -> str | None:
    """The sentence as a claim about the passage's title: as it is when it names the title, with a leading
    pronoun ("It", "His", ...) or the title's last word (a surname) replaced by the title, else None.
    Passages name their subject once and then say "He ..." or "Liamley ...": claims name it in full."""
    if re.search(rf"(?<!\w){re.escape(title)}(?!\w)", sentence):
        return sentence
    first, _, rest = sentence.partition(" ")
    if first in _SUBJECT and rest:
        return f"{title}{_SUBJECT[first]} {rest}"
    last = title.split()[-1]
    if len(title.split()) > 1 and first in (last, f"{last}'s") and rest:
        return f"{title}{first[len(last) :]} {rest}"
    return None


def verify_rows(
    passages: Sequence[Mapping[str, Any]], seed: int = 0, limit: int | None = None
) -> list[Record]:
    """A sentence of each passage restated about its title (`about_title`, with a phrase to swap) is the
    statement. Rows alternate: even ones keep it (answer "True"), odd ones swap one name or number for one
    of the same shape from another passage ("False"). Provenance: the passage's id and title."""
    rng = random.Random(f"free-task:verify:{seed}")
    pool = _phrase_pool(passages)
    rows: list[Record] = []
    for p in passages:
        if limit is not None and len(rows) >= limit:
            break
        title, text = str(p.get("title") or "").strip(), str(p.get("text") or "")
        if not title or p.get("id") is None:
            continue
        # True and False rows draw from the same sentences: those a swap could change
        claims = [c for c in (about_title(title, s) for s in sentences(text)) if c]
        usable = [c for c in claims if _swap_spans(title, c)]
        if not usable:
            continue
        sentence = rng.choice(usable)
        false = len(rows) % 2 == 1
        statement = _swap_one(rng, title, sentence, text, pool) if false else sentence
        if statement is None:
            continue  # the next passage tries the False row
        row = _record("verify", len(rows), statement, "False" if false else "True")
        row["output"].append({"provenance": [{"passage_id": str(p["id"]), "title": title}]})
        rows.append(row)
    return rows
