"""The reduced demo end to end: every artefact written, training reduced the loss, retrieval beat chance."""

from __future__ import annotations

import json

import pytest

from imprag.cli import main
from imprag.demo.pipeline import Demo, DemoConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--size", "tiny"])
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
    for method in ("imprag", "rag-bm25", "closed-book", "oracle"):
        for task in ("nq", "hotpotqa", "simpleqa", "2wikimultihopqa", "trex", "zsre", "fever", "aida"):
            metrics = json.loads((out / "eval" / f"{method}-{task}" / "metrics.json").read_text())
            assert metrics
    table = (out / "report" / "table.md").read_text()
    for method in ("imprag", "rag-bm25", "closed-book", "oracle"):
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
        Demo(DemoConfig(out=demo_run, size="tiny")).run()
    done = [r.message for r in caplog.records if "done already" in r.message]
    assert any("[train]" in m for m in done) and any("[index]" in m for m in done)
