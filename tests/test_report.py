"""`imprag report`: the Table-2-shaped markdown table (rows = methods, columns = tasks, "EM (recall@k)"),
row merging across runs, averages, and the chart file."""

from __future__ import annotations

import json
from pathlib import Path

from imprag.cli import main
from imprag.eval.report import collect, columns, format_table


def write_run(
    d: Path, method: str, k: int, tasks: dict[str, tuple[float, float | None]], n: int = 100
) -> Path:
    """A metrics.json as `imprag eval` writes it: task -> (em, answer recall@k or None)."""
    d.mkdir(parents=True)
    doc = {"method": method, "k": k, "ks": [1, k], "tasks": {}}
    for task, (em, rec) in tasks.items():
        m = {"n": n, "em": em}
        if rec is not None:
            m[f"answer_recall@{k}"] = rec
            m["answer_recall@1"] = rec / 2
        doc["tasks"][task] = {"task": task, "n": n, "metrics": m}
    (d / "metrics.json").write_text(json.dumps(doc))
    return d


def table_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")
    ]


def test_table_shape_cells_and_averages(tmp_path):
    runs = [
        write_run(tmp_path / "imp-qa", "imprag", 5, {"nq": (0.30, 0.80), "hotpotqa": (0.20, 0.50)}),
        write_run(tmp_path / "imp-unseen", "imprag", 5, {"fever": (0.60, 0.70), "aida": (0.10, 0.40)}),
        write_run(tmp_path / "cb", "closed-book", 5, {"aida": (0.05, None), "nq": (0.10, None)}),
        write_run(tmp_path / "bm25", "rag-bm25", 5, {"nq": (0.25, 0.855), "aida": (0.0, 0.125)}),
        write_run(tmp_path / "bm25-again", "rag-bm25", 5, {"nq": (0.26, 0.86)}),  # same task again: own row
    ]
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep"), "--title", "tiny"]) == 0
    text = (tmp_path / "rep" / "table.md").read_text()
    assert text.startswith("# tiny\n")
    rows = table_rows(text)
    # columns in the paper's order (seen then unseen), Avg last
    assert rows[0] == ["method", "k", "NQ", "HotpotQA", "FEVER", "AIDA", "Avg"]
    body = {r[0]: r[1:] for r in rows[1:]}
    assert list(body) == ["closed-book", "rag-bm25", "rag-bm25 (bm25-again)", "imprag"]  # the paper's order
    assert body["imprag"] == ["5", "30.0 (80.0)", "20.0 (50.0)", "60.0 (70.0)", "10.0 (40.0)", "30.0 (60.0)"]
    assert body["closed-book"] == ["5", "10.0", "-", "-", "5.0", "7.5*"]  # EM only; partial average marked
    assert body["rag-bm25"] == ["5", "25.0 (85.5)", "-", "-", "0.0 (12.5)", "12.5 (49.0)*"]
    assert body["rag-bm25 (bm25-again)"][1] == "26.0 (86.0)"
    assert "*: average over the tasks this row has." in text
    assert "Seen formats: NQ, HotpotQA. Unseen formats: FEVER, AIDA." in text
    png = (tmp_path / "rep" / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["columns"] == ["nq", "hotpotqa", "fever", "aida"]
    assert [r["label"] for r in rep["rows"]] == list(body)
    assert rep["rows"][-1]["cells"]["nq"] == {"em": 0.3, "answer_recall": 0.8, "k": 5, "n": 100}


def test_single_task_has_no_average_and_unknown_tasks_sort_last(tmp_path):
    rows = collect([write_run(tmp_path / "a", "oracle", 10, {"rc": (0.5, 1.0), "nq": (0.4, 0.9)})])
    assert columns(rows) == ["nq", "rc"]
    one = collect([write_run(tmp_path / "b", "imprag", 10, {"nq": (0.4, 0.9)})])
    header = table_rows(format_table(one))[0]
    assert header == ["method", "k", "NQ"]


def test_skipped_tasks_are_named_under_the_table_and_in_report_json(tmp_path):
    from imprag.eval.report import build_report

    run = write_run(tmp_path / "imp", "imprag", 5, {"nq": (0.30, 0.80)})
    doc = build_report([run], tmp_path / "rep", skipped={"trex": "no tasks/trex/test.jsonl"})
    text = (tmp_path / "rep" / "table.md").read_text()
    assert text.endswith("Not evaluated: T-REx (no tasks/trex/test.jsonl).\n")
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved == doc and saved["skipped"] == {"trex": "no tasks/trex/test.jsonl"}
    assert saved["rows"][0]["cells"]["nq"]["em"] == 0.30  # rows -> cells -> task -> em as before
    assert "skipped" not in build_report([run], tmp_path / "rep2")


def test_examples_per_cell_names_each_format_when_their_sizes_differ(tmp_path):
    same = collect([write_run(tmp_path / "a", "imprag", 5, {"nq": (0.5, 1.0), "fever": (0.5, 1.0)}, n=16)])
    assert "Examples per cell: 16." in format_table(same)
    mixed = collect(
        [
            write_run(tmp_path / "qa", "imprag", 5, {"nq": (0.5, 1.0)}, n=32),
            write_run(tmp_path / "fv", "imprag", 5, {"fever": (0.5, 1.0)}, n=16),
            write_run(tmp_path / "cb", "closed-book", 5, {"nq": (0.0, None)}, n=8),
        ]
    )
    assert "Examples per cell: NQ 8/32, FEVER 16." in format_table(mixed)
