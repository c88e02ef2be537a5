"""The reduced demo end to end: every artefact written, training reduced the loss, retrieval beat chance."""

from __future__ import annotations

import json

import pytest

from imprag.cli import main
from imprag.data.tasks import EVAL_TASKS
from imprag.demo.pipeline import Demo, DemoConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--size", "tiny", "--backbone", "tiny"])
    assert code == 0
    return out


def test_every_artefact_is_written(demo_run):
    out = demo_run
    expected = [
        "world/world.json",
        "world/passages.jsonl",
        "backbone/init/imprag.json",
        "mined/nq-train.jsonl",
        "mined/hotpotqa-train.jsonl",
        "train/final/imprag.json",
        "train/metrics.jsonl",
        "index/metadata.json",
        "index/index.faiss",
        "report/table.md",
        "report/chart.png",
        "demo.json",
    ]
    missing = [p for p in expected if not (out / p).exists()]
    assert not missing
    for method in ("imprag", "rag-bm25", "rag-dense", "closed-book", "oracle"):
        for task in ("nq", "hotpotqa", "simpleqa", "2wikimultihopqa", "trex", "zsre", "fever", "aida"):
            metrics = json.loads((out / "eval" / f"{method}-{task}" / "metrics.json").read_text())
            assert metrics
    table = (out / "report" / "table.md").read_text()
    for method in ("imprag", "rag-bm25", "rag-dense", "closed-book", "oracle"):
        assert method in table
    summary = json.loads((out / "demo.json").read_text())
    assert len(summary["examples"]) == 3
    assert all(len(ex["passages"]) == 5 for ex in summary["examples"])


def test_training_reduced_the_loss_and_retrieval_beat_chance(demo_run):
    rows = [json.loads(line) for line in (demo_run / "train" / "metrics.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in rows if "loss" in r]
    assert stages == ["warmup"] * 60 + ["joint"] * 2 + ["read"] * 2 + ["distill"] * 3
    nce = [r["nce"] for r in rows if r.get("stage") == "warmup" and "nce" in r]
    assert len(nce) >= 20
    assert sum(nce[-5:]) / 5 < sum(nce[:5]) / 5
    evals = [r["eval"] for r in rows if "eval" in r]
    assert evals, "the trainer evaluates dev recall at the end"
    last = evals[-1]
    assert last["recall@5"] > 3 * last["chance@5"]


def test_rerun_reuses_finished_steps(demo_run, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        Demo(DemoConfig(out=demo_run, size="tiny", backbone="tiny")).run()
    done = [r.message for r in caplog.records if "done already" in r.message]
    assert any("[train]" in m for m in done) and any("[index]" in m for m in done)


def test_a_cell_of_another_question_count_is_evaluated_again_and_the_report_rebuilt(demo_run, caplog):
    import logging

    # a finished cell from a run whose size had another test-question count for this format
    metrics = demo_run / "eval" / "imprag-nq" / "metrics.json"
    doc = json.loads(metrics.read_text())
    assert doc["limit"] == 6
    metrics.write_text(json.dumps({**doc, "limit": 3}))
    table = demo_run / "report" / "table.md"
    table.write_text("stale")
    with caplog.at_level(logging.INFO):
        Demo(DemoConfig(out=demo_run, size="tiny", backbone="tiny")).run()
    again = [r.message for r in caplog.records if "evaluating the cell again" in r.message]
    assert again == ["[eval imprag/nq] 6 test questions now: evaluating the cell again"]
    assert json.loads(metrics.read_text())["limit"] == 6
    assert json.loads(metrics.read_text())["tasks"]["nq"]["n"] == 6
    assert table.read_text().startswith("# imprag demo (tiny)")  # rebuilt from the cells


@pytest.fixture(scope="module")
def smollm2_demo_run(tmp_path_factory, monkeypatch_module):
    """The default (real SmolLM2) demo, reduced: size tiny (300 entities, 30 cached warmup steps, 2 reader
    steps, 3 test questions per format); the converted backbone is kept in the repository's .cache."""
    from conftest import REPO

    monkeypatch_module.setenv("IMPRAG_CACHE", str(REPO / ".cache" / "imprag"))
    out = tmp_path_factory.mktemp("demo-smollm2")
    assert main(["demo", "--out", str(out), "--size", "tiny"]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_the_default_demo_runs_the_real_backbone_end_to_end(smollm2_demo_run):
    out = smollm2_demo_run
    summary = json.loads((out / "demo.json").read_text())
    assert summary["backbone"] == "smollm2" and len(summary["examples"]) == 3
    report = json.loads((out / "report" / "report.json").read_text())
    methods = {row["method"]: row["cells"] for row in report["rows"]}
    assert list(methods) == ["closed-book", "rag-bm25", "rag-dense", "imprag", "oracle"]
    for cells in methods.values():  # every cell of every method
        assert set(cells) == set(EVAL_TASKS)
        assert all(c.get("em") is not None for c in cells.values())
    # the index came from the cached warmup's vectors (the reader stage froze the retrieval path)
    assert (out / "train" / "final" / "passage_vectors.safetensors").is_file()
    rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows if "loss" in r] == ["read", "read"]
    last = [r["eval"] for r in rows if "eval" in r][-1]
    assert last["recall@5"] > 10 * last["chance@5"]  # the implicit query retrieves after 30 cached steps
