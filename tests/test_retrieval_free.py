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


def _people(n: int = 12) -> list[dict]:
    """Passages whose first sentence names the title, a city and a year; one without its title in the
    text and one without a title (both give no row)."""
    first, last = ["Ala", "Bren", "Cor", "Dov"], ["Marsk", "Tolven", "Rasp"]
    cities = ["Velmora", "Castel Rua", "Oskar Dunn", "Lima"]
    out = [
        {"id": f"v{i}", "title": f"{first[i % 4]} {last[i % 3]}",
         "text": f"{first[i % 4]} {last[i % 3]} was born in {cities[i % 4]} in {1800 + 7 * i}. "
                 f"{first[i % 4]} {last[i % 3]} was a painter."}
        for i in range(n)
    ]  # fmt: skip
    out.append({"id": "v-notitle-in-text", "title": "Zed Orr", "text": "Lima was founded in 1900."})
    out.append({"id": "v-untitled", "title": "", "text": "Mo Fen was born in Lima in 1901."})
    return out


def _one_swap(statement: str, sentence: str) -> tuple[str, str] | None:
    """(old, new) when `statement` is `sentence` with one of its maskable phrases replaced, else None."""
    for m in rf._PHRASE.finditer(sentence):
        head, tail = sentence[: m.start()], sentence[m.end() :]
        if statement.startswith(head) and statement.endswith(tail) and len(statement) > len(head) + len(tail):
            return m.group(), statement[len(head) : len(statement) - len(tail)]
    return None


def test_verify_rows_are_true_sentences_or_one_phrase_swapped(tmp_path):
    from imprag.data.tasks import apply_template
    from imprag.model.calibration import template_key

    passages = _people()
    by_id = {p["id"]: p for p in passages}
    rows = rf.verify_rows(passages, seed=0)
    assert rows == rf.verify_rows(passages, seed=0) and rows != rf.verify_rows(passages, seed=1)
    assert rf.verify_rows(passages, seed=0, limit=5) == rows[:5]
    assert [r["id"] for r in rows] == [f"verify-train-{i:05d}" for i in range(len(rows))]
    labels = [r["output"][0]["answer"] for r in rows]
    assert len(rows) == 12 and labels.count("True") == labels.count("False") == 6
    number = lambda p: all(w[0].isdigit() for w in p.split())  # noqa: E731
    for row, label in zip(rows, labels):
        (prov,) = row["output"][1]["provenance"]
        p = by_id[prov["passage_id"]]
        assert prov["title"] == p["title"] and p["title"] in row["input"]
        own = [rf.about_title(p["title"], x) for x in rf.sentences(p["text"])]
        if label == "True":
            assert row["input"] in own
            continue
        (old, new), *more = [s for s in (_one_swap(row["input"], x) for x in own) if s]
        assert not more and old != new and rf._PHRASE.fullmatch(new) and number(old) == number(new)
        assert new not in p["text"] and p["title"] not in old
        assert any(new in q["text"] for q in passages if q is not p)  # taken from another passage
    # the rows read as a KILT file of the verify task, with FEVER's prompt format and answers
    path = tmp_path / "verify-train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(path, "verify", require_answers=True)
    assert [ex.answers for ex in examples] == [[x] for x in labels]
    assert [ex.provenance[0].passage_id for ex in examples] == [
        r["output"][1]["provenance"][0]["passage_id"] for r in rows
    ]
    fever_key = template_key(apply_template("fever", "Kate Hudson is an actress."))
    assert {template_key(ex.prompt) for ex in examples} == {fever_key} == {"fever"}
    assert examples[0].prompt == apply_template("fever", rows[0]["input"])


def test_about_title_restates_a_sentence_with_the_title_as_its_subject():
    title = "Masays Pamock"
    assert rf.about_title(title, "Masays Pamock was born in 1827.") == "Masays Pamock was born in 1827."
    assert rf.about_title(title, "She graduated from Rouverur University.") == (
        "Masays Pamock graduated from Rouverur University."
    )
    assert (
        rf.about_title(title, "Her first book appeared in 1850.")
        == "Masays Pamock's first book appeared in 1850."
    )
    assert rf.about_title(title, "Pamock was employed by Shakri Polytechnic.") == (
        "Masays Pamock was employed by Shakri Polytechnic."
    )
    assert rf.about_title(title, "Pamock's students became well known.") == (
        "Masays Pamock's students became well known."
    )
    # about something else, or a one-word title whose "surname" is the whole title: not a claim about it
    assert rf.about_title(title, "Rouverur University was founded in 1700.") is None
    assert rf.about_title(title, "It") is None
    assert rf.about_title("Lima", "Limas are animals.") is None


def test_verify_swaps_a_number_for_one_of_its_length():
    passages = [
        {"id": "a", "title": "Ala Marsk", "text": "Ala Marsk was born in 1827. She had 12,000 books."},
        {"id": "b", "title": "Bren Tolven", "text": "Bren Tolven was born in 1901. He had 53,000 books."},
    ]
    swaps = []
    for row in rf.verify_rows(passages * 20, seed=3):
        if row["output"][0]["answer"] == "False":
            own = {p["id"]: p for p in passages}[row["output"][1]["provenance"][0]["passage_id"]]
            claims = [rf.about_title(own["title"], x) for x in rf.sentences(own["text"])]
            ((old, new),) = [s for s in (_one_swap(row["input"], c) for c in claims if c) if s]
            swaps.append((old, new))
    assert {len(old) for old, _ in swaps} == {4, 6}  # both kinds were swapped, each for its own kind
    assert all(len(old) == len(new) and old != new for old, new in swaps)


def test_verify_is_kept_apart_from_the_tasks_the_demo_builds():
    assert "verify" not in rf.FREE_TASKS and rf.EVIDENCE_TASKS == ("verify",)
