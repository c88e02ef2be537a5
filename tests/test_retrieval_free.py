"""Retrieval-free training tasks from plain passages (imprag.data.retrieval_free): each row restores, continues
or answers from the passage it came from, reads with its task's template, and is the same for the same seed."""

from __future__ import annotations

import json

from imprag.data import retrieval_free as rf
from imprag.data.example import Example, Provenance
from imprag.data.kilt import load_examples

PASSAGES = [
    {"id": "p1", "title": "Elvara Montis", "text": "Elvara Montis is a painter. She was born in Velmora in 1843. "
     "Her teacher was Oren Dask. She died in Castel Rua."},
    {"id": "p2", "title": "Velmora", "text": "Velmora is a town on the river Suun. It has 4,200 inhabitants."},
    {"id": "p3", "title": "one sentence", "text": "a passage of a single lowercase sentence with nothing to mask"},
]  # fmt: skip


def test_sentences():
    assert rf.sentences(PASSAGES[1]["text"]) == [
        "Velmora is a town on the river Suun.",
        "It has 4,200 inhabitants.",
    ]
    assert rf.sentences("Dr. Smith came. Then 3 left!  \"Why?\" he asked.") == [
        "Dr.", "Smith came.", "Then 3 left!", '"Why?" he asked.',
    ]  # fmt: skip


def test_denoise_masks_names_and_numbers_and_its_answer_is_the_passage():
    rows = rf.denoise_rows(PASSAGES, seed=0)
    assert [r["id"] for r in rows] == ["denoise-train-00000", "denoise-train-00001"]  # p3 has nothing to mask
    for row, p in zip(rows, PASSAGES):
        answer = row["output"][0]["answer"]
        assert answer == f"{p['title']}: {p['text']}"
        masked = row["input"]
        assert 1 <= masked.count(rf.MASK) <= 3
        # the unmasked parts are the passage's, in order, and the title is never masked
        parts = masked.split(rf.MASK)
        assert parts[0].startswith(p["title"] + ": ")
        at = 0
        for part in parts:
            at = answer.index(part, at) + len(part)
    assert rf.denoise_rows(PASSAGES, seed=0) == rows
    assert rf.denoise_rows(PASSAGES, seed=0, limit=1) == rows[:1]


def test_nextsent_continues_the_passage():
    rows = rf.nextsent_rows(PASSAGES, seed=3)
    assert len(rows) == 2  # p3 is one sentence
    for row, p in zip(rows, PASSAGES):
        context, answer = row["input"], row["output"][0]["answer"]
        assert f"{context} {answer}".startswith(f"{p['title']}: ") and answer in rf.sentences(p["text"])
        assert f"{p['title']}: {p['text']}".startswith(f"{context} {answer}")


def test_rc_puts_the_gold_passage_beside_the_question(tmp_path):
    questions = [
        Example("q1", "nq", "where was Elvara Montis born?", "", ["Velmora"], [Provenance(passage_id="p1")]),
        Example("q2", "nq", "no gold here?", "", ["x"], [Provenance(wikipedia_id="123")]),
        Example("q3", "nq", "how many live in Velmora?", "", ["4,200"], [Provenance(passage_id="p2")]),
    ]
    rows = rf.rc_rows(questions, {p["id"]: p for p in PASSAGES}, seed=0)
    assert [r["input"]["question"] for r in rows] == [
        "where was Elvara Montis born?",
        "how many live in Velmora?",
    ]
    assert [r["output"][0]["answer"] for r in rows] == ["Velmora", "4,200"]
    for r in rows:
        assert r["output"][0]["answer"] in r["input"]["context"]
    # the rows read as KILT lines of their tasks
    for task, task_rows in (
        ("rc", rows),
        ("denoise", rf.denoise_rows(PASSAGES)),
        ("nextsent", rf.nextsent_rows(PASSAGES)),
    ):
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in task_rows))
        examples = load_examples(path, task, require_answers=True)
        assert len(examples) == len(task_rows)
    assert examples[0].prompt.endswith("Write the sentence that follows this text:")
