"""`imprag mine` and imprag.data.mining.mine: real bm25s / MiniLM on a corpus and task files written
here, the row format, gold-passage recall, the task guess, and the one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imprag.cli import main
from imprag.data.kilt import load_examples
from imprag.data.mining import gold_recall, mine
from imprag.errors import UserError
from imprag.retrievers.bm25 import BM25Retriever

PASSAGES = [
    {
        "id": "p-paris",
        "title": "Paris",
        "text": "Paris is the capital and largest city of France, on the Seine.",
    },
    {"id": "p-berlin", "title": "Berlin", "text": "Berlin is the capital of Germany and its largest city."},
    {"id": "p-nile", "title": "Nile", "text": "The Nile is a major river in northeastern Africa."},
    {
        "id": "p-everest",
        "title": "Mount Everest",
        "text": "Mount Everest is the highest mountain above sea level.",
    },
    {
        "id": "p-python",
        "title": "Python",
        "text": "Python is a programming language created by Guido van Rossum.",
    },
    {"id": "p-mozart", "title": "Wolfgang Amadeus Mozart", "text": "Mozart was a composer born in Salzburg."},
]


def kilt(id_: str, question: str, answer: str, prov: list[dict]) -> dict:
    return {"id": id_, "input": question, "output": [{"answer": answer}, {"provenance": prov}]}


QUESTIONS = [
    kilt("q1", "what is the capital of France", "Paris", [{"passage_id": "p-paris", "title": "Paris"}]),
    # "where", "was", "the" are stopwords: only p-mozart matches; rank 2 is a 0-score tie -> corpus order
    kilt("q2", "where was the composer Mozart born", "Salzburg", [{"passage_id": "p-mozart"}]),
    # KILT-style provenance without a passage id of this corpus: not counted in gold recall
    kilt("q3", "who created Python", "Guido van Rossum", [{"wikipedia_id": "23862", "title": "Python"}]),
    # the gold passage (p-nile) shares no word with the question: a miss at top 2
    kilt("q4", "largest city of Germany", "Berlin", [{"passage_id": "p-nile"}]),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "passages": write_jsonl(tmp_path / "passages.jsonl", PASSAGES),
        "data": write_jsonl(tmp_path / "nq-dev-kilt.jsonl", QUESTIONS),
        "cache": tmp_path / "cache",
        "out": tmp_path / "out" / "candidates.jsonl",
    }


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_mine_rows_and_exact_bm25_ranking(files, caplog) -> None:
    exs = load_examples(files["data"], "nq")
    with caplog.at_level("INFO", logger="imprag.data.mining"):
        rows = mine(exs, files["passages"], retriever="bm25", top_k=2, cache_dir=files["cache"])
    assert [r["id"] for r in rows] == ["q1", "q2", "q3", "q4"]
    r1, r2, r3, r4 = rows
    assert set(r1) == {"id", "task", "prompt", "answers", "gold_passage_ids", "candidates", "scores"}
    assert r1["task"] == "nq" and r1["prompt"] == "Q: what is the capital of France A:"
    assert r1["answers"] == ["Paris"] and r1["gold_passage_ids"] == ["p-paris"]
    assert r1["candidates"] == ["p-paris", "p-berlin"] and r1["scores"][0] > r1["scores"][1] > 0
    assert r2["candidates"] == ["p-mozart", "p-paris"] and r2["scores"][0] > 0 and r2["scores"][1] == 0
    assert r3["gold_passage_ids"] == [] and r3["candidates"][0] == "p-python"
    assert r4["candidates"] == ["p-berlin", "p-paris"] and r4["gold_passage_ids"] == ["p-nile"]
    assert gold_recall(rows) == (2, 3)  # q1, q2 hit; q4 misses; q3 has no passage id
    assert gold_recall(rows, k=1) == (2, 3)
    assert "for 2 of 3 examples" in caplog.text
    # scores are the retriever's own
    ids, scores = BM25Retriever.from_passages(files["passages"], cache_dir=files["cache"]).search(
        [r1["prompt"]], 2
    )
    assert ids[0] == r1["candidates"] and r1["scores"] == pytest.approx(scores[0].tolist(), abs=1e-5)


def test_mine_top_k_clipped_to_corpus_and_bad_args(files) -> None:
    exs = load_examples(files["data"], "nq")
    rows = mine(exs, files["passages"], top_k=50, cache_dir=files["cache"])
    assert all(len(r["candidates"]) == len(PASSAGES) == len(r["scores"]) for r in rows)
    assert all(sorted(r["candidates"]) == sorted(p["id"] for p in PASSAGES) for r in rows)
    assert gold_recall(rows) == (3, 3)
    with pytest.raises(UserError, match="unknown retriever 'splade'"):
        mine(exs, files["passages"], retriever="splade")
    with pytest.raises(UserError, match="at least 1"):
        mine(exs, files["passages"], top_k=0)
    # an already loaded retriever is used as it is, in small batches
    ret = BM25Retriever.from_passages(files["passages"], cache_dir=files["cache"])
    again = mine(exs, files["passages"], retriever=ret, top_k=50, batch_size=3)
    assert again == rows


def test_cli_end_to_end_bm25(files, capsys) -> None:
    rc = main(
        [
            "mine",
            "--passages",
            str(files["passages"]),
            "--data",
            str(files["data"]),
            "--out",
            str(files["out"]),
            "--top-k",
            "2",
            "--cache-dir",
            str(files["cache"]),
        ]  # fmt: skip
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "mined 4 nq examples with bm25 (top 2)" in out and "2/3 (66.7%)" in out
    rows = read_rows(files["out"])
    assert [r["candidates"] for r in rows] == [
        ["p-paris", "p-berlin"],
        ["p-mozart", "p-paris"],
        ["p-python", "p-paris"],  # "python"/"created" only in p-python; rank 2 a 0-score tie
        ["p-berlin", "p-paris"],
    ]
    assert not [p for p in files["out"].parent.iterdir() if p.name != "candidates.jsonl"]  # no temp left


def test_cli_task_guessed_from_file_name_and_given(files, tmp_path: Path) -> None:
    fever = write_jsonl(
        tmp_path / "fever-dev-kilt.jsonl",
        [kilt("f1", "Mount Everest is the highest mountain.", "SUPPORTS", [{"passage_id": "p-everest"}])],
    )
    out = tmp_path / "fever.jsonl"
    args = [
        "mine",
        "--passages",
        str(files["passages"]),
        "--out",
        str(out),
        "--cache-dir",
        str(files["cache"]),
    ]
    assert main([*args, "--data", str(fever)]) == 0
    (row,) = read_rows(out)
    assert (
        row["task"] == "fever"
        and row["prompt"] == "Is this statement true? Mount Everest is the highest mountain. A:"
    )
    assert row["answers"] == ["True"] and row["candidates"][0] == "p-everest"
    # an unguessable name falls back to nq; --task overrides the guess
    plain = write_jsonl(
        tmp_path / "questions.jsonl", [{"id": "x", "question": "capital of France", "answers": ["Paris"]}]
    )
    assert main([*args, "--data", str(plain)]) == 0
    assert read_rows(out)[0]["task"] == "nq" and read_rows(out)[0]["prompt"] == "Q: capital of France A:"
    assert main([*args, "--data", str(fever), "--task", "hotpotqa"]) == 0
    assert read_rows(out)[0]["task"] == "hotpotqa"


def test_cli_dense_end_to_end(files, capsys) -> None:
    data = write_jsonl(
        files["data"].parent / "paraphrase.jsonl",
        [kilt("d1", "tallest peak on earth", "Mount Everest", [{"passage_id": "p-everest"}]),
         kilt("d2", "who wrote symphonies in the eighteenth century", "Mozart", [{"passage_id": "p-mozart"}])],
    )  # fmt: skip
    rc = main(
        [
            "mine",
            "--passages",
            str(files["passages"]),
            "--data",
            str(data),
            "--out",
            str(files["out"]),
            "--retriever",
            "dense",
            "--top-k",
            "3",
            "--cache-dir",
            str(files["cache"]),
        ]  # fmt: skip
    )
    assert rc == 0
    rows = read_rows(files["out"])
    assert [r["candidates"][0] for r in rows] == ["p-everest", "p-mozart"]
    assert all(len(r["scores"]) == 3 and r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    assert all(-1.0 <= s <= 1.0 for r in rows for s in r["scores"])  # cosine similarities
    assert "2/2 (100.0%)" in capsys.readouterr().out


def _one_error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("imprag mine: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_errors_exit_2_with_one_line(files, tmp_path: Path, capsys) -> None:
    base = [
        "mine",
        "--passages",
        str(files["passages"]),
        "--data",
        str(files["data"]),
        "--out",
        str(files["out"]),
    ]
    base += ["--cache-dir", str(files["cache"])]

    assert main([*base, "--retriever", "tfidf"]) == 2
    _one_error_line(capsys, "--retriever 'tfidf'", "bm25, dense")
    assert main([*base, "--on-error", "ignore"]) == 2
    _one_error_line(capsys, "--on-error 'ignore'", "fail, skip")
    assert main([*base, "--top-k", "0"]) == 2
    _one_error_line(capsys, "--top-k must be at least 1")
    assert main([*base, "--task", "squad"]) == 2
    _one_error_line(capsys, "unknown task 'squad'")

    missing = [
        "mine",
        "--passages",
        str(tmp_path / "nope.jsonl"),
        "--data",
        str(files["data"]),
        "--out",
        str(files["out"]),
    ]
    assert main(missing) == 2
    _one_error_line(capsys, "nope.jsonl: file not found", "--passages")
    assert (
        main(
            [
                "mine",
                "--passages",
                str(files["passages"]),
                "--data",
                str(tmp_path / "gone.jsonl"),
                "--out",
                "x",
            ]
        )
        == 2
    )
    _one_error_line(capsys, "gone.jsonl: file not found", "--data")
    assert (
        main(
            [
                "mine",
                "--passages",
                str(files["passages"]),
                "--data",
                str(files["data"]),
                "--out",
                str(files["data"]),
            ]
        )
        == 2
    )
    _one_error_line(capsys, "would overwrite an input file")
    assert not files["out"].exists()  # nothing written by any failed run


def test_cli_bad_lines_fail_or_skip(files, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "nq-bad.jsonl"
    bad.write_text(
        json.dumps(QUESTIONS[0]) + "\n{not json\n" + json.dumps(QUESTIONS[1]) + "\n", encoding="utf-8"
    )
    files["out"].parent.mkdir(parents=True, exist_ok=True)
    files["out"].write_text("previous result\n")
    args = ["mine", "--passages", str(files["passages"]), "--data", str(bad), "--out", str(files["out"])]
    args += ["--cache-dir", str(files["cache"])]
    assert main(args) == 2
    _one_error_line(capsys, "nq-bad.jsonl:2:", "--on-error skip")
    assert (
        files["out"].read_text() == "previous result\n"
    )  # an earlier output is never clobbered by a failure
    assert main([*args, "--on-error", "skip"]) == 0
    assert [r["id"] for r in read_rows(files["out"])] == ["q1", "q2"]

    # a bad passages line is reported with its line number too
    bad_p = write_jsonl(tmp_path / "bad-passages.jsonl", [PASSAGES[0], {"title": "no id", "text": "x"}])
    args = ["mine", "--passages", str(bad_p), "--data", str(files["data"]), "--out", str(files["out"])]
    assert main([*args, "--cache-dir", str(files["cache"])]) == 2
    _one_error_line(capsys, "bad-passages.jsonl:2:", 'missing "id"')

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["mine", "--passages", str(files["passages"]), "--data", str(empty), "--out", str(files["out"])]
    assert main([*args, "--cache-dir", str(files["cache"])]) == 2
    _one_error_line(capsys, "no examples")
