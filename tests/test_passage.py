"""One validity rule for a passages file, whichever command reads it: index, train, retrievers, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imprag.errors import UserError
from imprag.eval.methods import PassageLookup
from imprag.index.corpus import find_repeated_id, iter_chunks
from imprag.passage import passage_text, read_passage_lines, read_passages
from imprag.train.data import load_passages

LINES = [
    {"id": "a", "title": "A", "text": "first"},
    {"id": "b", "title": "B", "text": "second"},
    {"id": "a", "title": "A again", "text": "a repeat"},  # line 3: repeats line 1
    {"id": True, "text": "a bool is not an id"},  # line 4
    {"id": "c", "title": "C", "text": "   "},  # line 5: empty text
    {"id": "d", "title": "D", "text": "last"},
]


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in LINES) + "\n\n")  # a trailing blank line is no passage
    return path


def test_every_reader_refuses_the_first_bad_line_alike(bad: Path) -> None:
    readers = {
        "retrievers": lambda: read_passages(bad),
        "train": lambda: load_passages(bad),
        "eval": lambda: PassageLookup(bad),
    }
    for name, read in readers.items():
        with pytest.raises(UserError) as e:
            read()
        assert f"{bad}:3: passage id 'a' repeats line 1; ids must be unique" in str(e.value), name
    with pytest.raises(UserError, match="--data.on_error skip"):  # train names its own flag
        load_passages(bad)
    assert find_repeated_id(bad, show_progress=False) == ("a", 3, 1)  # the index's pre-pass, same lines


def test_every_reader_keeps_the_same_passages_when_skipping(bad: Path) -> None:
    kept = ["a", "b", "d"]  # the first line of a repeated id wins
    ids, texts = read_passages(bad, on_error="skip")
    assert ids == kept and texts == ["A: first", "B: second", "D: last"]
    assert load_passages(bad, on_error="skip") == dict(zip(ids, texts))
    lookup = PassageLookup(bad, on_error="skip")
    assert lookup.ids() == kept and lookup.get("a")["text"] == "first"
    assert lookup.ids_for_title("a") == ["a"]
    chunks = list(iter_chunks(bad, 100, lambda c: True, passage_text, on_error="skip"))
    assert [p.text for p in chunks[0].passages] == ["A: first", "B: second", "A again: a repeat", "D: last"]
    assert [s["line"] for s in chunks[0].skipped] == [4, 5]  # the repeat is the pre-pass's to refuse


def test_byte_ranges_are_the_lines(bad: Path) -> None:
    raw = bad.read_bytes()
    for p in read_passage_lines(bad, on_error="skip"):
        assert json.loads(raw[p.start : p.end]) == p.record == LINES[p.line - 1]


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.jsonl: passages file not found \(check --data\.passages\)"):
        load_passages(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for read in (read_passages, load_passages, PassageLookup):
        with pytest.raises(UserError, match="no passages found"):
            read(empty)
