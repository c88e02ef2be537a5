"""Bad input to `imprag eval` / `imprag report` / `imprag score`: one clear line on stderr, exit 2, no
traceback, and nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_index

from imprag.cli import main
from imprag.errors import UserError

PASSAGES = [
    {"id": "p0", "title": "Aldor", "text": "The capital of Aldor is Brightwater."},
    {"id": "p1", "title": "Sena", "text": "The Sena is a river that flows north."},
    {"id": "p2", "title": "Orun", "text": "Orun is a valley in the mountains."},
]
NQ = [
    {
        "id": "q0",
        "input": "what is the capital of aldor",
        "output": [{"answer": "Brightwater"}, {"provenance": [{"passage_id": "p0"}]}],
    },
    {
        "id": "q1",
        "input": "which river flows north",
        "output": [{"answer": "Sena"}, {"provenance": [{"passage_id": "p1"}]}],
    },
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("evalerr")
    passages = _jsonl(root / "passages.jsonl", PASSAGES)
    nq = _jsonl(root / "nq-dev.jsonl", NQ)
    index = root / "index"
    build_index(tiny_model_dir, passages, index)
    return {"root": root, "passages": passages, "nq": nq, "index": index, "model": tiny_model_dir}


def args(s: dict, out: Path, method: str = "closed-book", **over: str) -> list[str]:
    a = {
        "--model": str(s["model"]),
        "--data": str(s["nq"]),
        "--method": method,
        "--out": str(out),
        "--max-new-tokens": "2",
    }
    a.update(over)
    return ["eval", *[x for kv in a.items() for x in kv if kv[1] is not None], "--quiet"]


def one_error_line(capsys, command: str = "eval") -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith(f"imprag {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_missing_files(setup, tmp_path, capsys):
    assert main(args(setup, tmp_path / "o", **{"--data": str(tmp_path / "nope.jsonl")})) == 2
    assert "nope.jsonl: task file not found" in one_error_line(capsys)
    assert main(args(setup, tmp_path / "o", **{"--model": str(tmp_path / "no-model")})) == 2
    assert "no-model: model folder not found" in one_error_line(capsys)
    assert main(args(setup, tmp_path / "o", "rag-bm25", **{"--passages": str(tmp_path / "p.jsonl")})) == 2
    assert "p.jsonl: passages file not found" in one_error_line(capsys)
    assert main(args(setup, tmp_path / "o", "imprag", **{"--index": str(tmp_path)})) == 2
    assert "not an index folder" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_task_file_without_answers(setup, tmp_path, capsys):
    data = _jsonl(
        tmp_path / "nq-test_without_answers-kilt.jsonl", [{"id": "t0", "input": "who wrote hamlet"}]
    )
    assert main(args(setup, tmp_path / "o", **{"--data": str(data)})) == 2
    line = one_error_line(capsys)
    assert f"{data}:1: example t0 has no gold answers" in line


def test_bad_task_files(setup, tmp_path, capsys):
    bad = tmp_path / "nq-dev.jsonl"
    bad.write_text(json.dumps(NQ[0]) + "\n{not json\n")
    assert main(args(setup, tmp_path / "o", **{"--data": str(bad)})) == 2
    assert f"{bad}:2: not valid JSON" in one_error_line(capsys)
    plain = _jsonl(tmp_path / "data.jsonl", NQ)
    assert main(args(setup, tmp_path / "o", **{"--data": str(plain)})) == 2
    assert "cannot tell the task from the file name; pass --task" in one_error_line(capsys)
    assert main(args(setup, tmp_path / "o", **{"--data": str(plain), "--task": "nope"})) == 2
    assert "unknown task 'nope'" in one_error_line(capsys)
    dup = _jsonl(tmp_path / "nq-dup.jsonl", [NQ[0], NQ[0]])
    assert main(args(setup, tmp_path / "o", **{"--data": str(dup)})) == 2
    assert "duplicate id 'q0'" in one_error_line(capsys)


def test_index_built_by_another_model(setup, tmp_path, capsys):
    from imprag.model.tiny import save_tiny

    other = save_tiny(tmp_path / "other", arch="llama", seed=1)
    assert (
        main(args(setup, tmp_path / "o", "imprag", **{"--model": str(other), "--index": str(setup["index"])}))
        == 2
    )
    line = one_error_line(capsys)
    assert "index was built by a model with fingerprint" in line and "re-index" in line


def test_method_needs(setup, tmp_path, capsys):
    assert main(args(setup, tmp_path / "o", "imprag")) == 2
    assert "--method imprag needs --index" in one_error_line(capsys)
    assert main(args(setup, tmp_path / "o", "rag-bm25")) == 2
    assert "--method rag-bm25 needs --passages" in one_error_line(capsys)
    assert main(args(setup, tmp_path / "o", "oracle", **{"--index": str(setup["index"]), "-k": "11"})) == 2
    assert "-k 11: the model reads at most k=10" in one_error_line(capsys)
    assert main(args(setup, tmp_path / "o", **{"--batch-size": "0"})) == 2
    assert "--batch-size must be >= 1" in one_error_line(capsys)
    from imprag.eval.runner import EvalConfig

    with pytest.raises(UserError, match="--fever must be one of likelihood, label, got 'vote'"):
        EvalConfig(model=setup["model"], data=[setup["nq"]], method="closed-book", out=tmp_path, fever="vote")


def test_out_dir_of_another_run_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(args(setup, out)) == 0
    capsys.readouterr()
    assert main(args(setup, out, **{"--max-new-tokens": "3"})) == 2
    line = one_error_line(capsys)
    assert "holds a run with other settings (max_new_tokens differ)" in line
    assert main(args(setup, out, **{"--fever": "label"})) == 2  # answers decided another way
    assert "holds a run with other settings (decoding differ)" in one_error_line(capsys)
    assert json.loads((out / "metrics.json").read_text())["max_new_tokens"] == 2  # the finished run is intact


def test_prediction_ids_not_in_gold(setup, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(args(setup, out)) == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    preds[1]["id"] = "zz"
    bad = _jsonl(tmp_path / "bad.jsonl", preds)
    capsys.readouterr()
    assert main(["score", "--predictions", str(bad), "--gold", str(setup["nq"])]) == 2
    assert f"{bad}:2: prediction id 'zz' is not in the gold file" in one_error_line(capsys, "score")


def test_report_bad_runs(setup, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "missing: run folder not found" in one_error_line(capsys, "report")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text("{}")
    assert main(["report", str(tmp_path / "half"), "--out", str(tmp_path / "r")]) == 2
    assert "half: no metrics.json (not a finished `imprag eval` run" in one_error_line(capsys, "report")
    (tmp_path / "half" / "metrics.json").write_text('{"tasks": 3}')
    assert main(["report", str(tmp_path / "half"), "--out", str(tmp_path / "r")]) == 2
    assert "not an `imprag eval` metrics file" in one_error_line(capsys, "report")
    assert not (tmp_path / "r").exists()
