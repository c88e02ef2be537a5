"""Retrieval-free training tasks built from plain passages, for a corpus that comes without them.

The synthetic world (imprag.demo.world_tasks) builds these from its own facts; any other corpus has only
passages and its training questions, so the same three tasks are derived from those:

    denoise   a passage with 1-3 phrases (capitalised names, numbers) replaced by [MASK] -> the passage
    nextsent  a passage's first sentences -> the sentence that follows them
    rc        a training question beside its gold passage (half the time with a distractor) -> its answer

Rows are KILT lines (`{"id", "input", "output": [{"answer"}]}`, no provenance) that `load_examples`
reads with the task's template. Same passages, questions and seed -> the same rows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imprag.data.example import Example
from imprag.passage import passage_text

FREE_TASKS = ("rc", "denoise", "nextsent")
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
