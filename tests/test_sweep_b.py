"""benchmarks/sweep_b.py: per-b numbers read from a demo folder, and the table / json / chart it writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sweep_b", REPO / "benchmarks" / "sweep_b.py")
assert _spec is not None and _spec.loader is not None
sweep_b = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep_b)

GROUP = {"nq": "seen", "simpleqa": "seen", "fever": "unseen"}


def fake_run(d: Path, scores: dict[str, dict[str, tuple[float, float]]], elapsed: float) -> Path:
    """A demo folder as far as the sweep reads it: method -> task -> (em, answer recall@5)."""
    for method, tasks in scores.items():
        for task, (em, rec) in tasks.items():
            m = {"n": 10, "em": em, "answer_recall@5": rec}
            path = d / "eval" / f"{method}-{task}" / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"tasks": {task: {"group": GROUP[task], "metrics": m}}}))
    rows = [
        {"step": 1, "loss": 1.0, "elapsed": elapsed / 2},
        {"step": 1, "stage": "warmup", "eval": {"recall@5": 0.5}},
        {"step": 2, "loss": 0.5, "elapsed": elapsed},
        {"step": 2, "stage": "distill", "eval": {"recall@5": 0.75}},
    ]
    (d / "train").mkdir(parents=True)
    (d / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_collect_and_outputs(tmp_path):
    rows = []
    for b, rec in ((0, 0.2), (3, 0.6)):
        run = fake_run(
            tmp_path / f"b{b}",
            {
                "imprag": {"nq": (0.1, rec), "simpleqa": (0.3, rec / 2), "fever": (0.0, 0.1)},
                "oracle": {"nq": (0.5, 1.0), "fever": (0.25, 1.0)},
            },
            elapsed=100.0 + b,
        )
        rows.append({"b": b, "t": 5, **sweep_b.collect(run, ["imprag", "oracle"])})
    assert abs(rows[1]["imprag answer_recall@5 seen"] - 0.45) < 1e-9  # mean of nq 0.6 and simpleqa 0.3
    assert rows[1]["imprag answer_recall@5 unseen"] == 0.1
    assert abs(rows[0]["imprag em seen"] - 0.2) < 1e-9
    assert rows[0]["oracle em unseen"] == 0.25
    assert rows[1]["train_s"] == 103.0 and rows[1]["dev recall@5"] == 0.75
    assert list(rows[0]["tasks"]["imprag"]) == ["nq", "simpleqa", "fever"]  # the paper's order

    out = tmp_path / "sweep"
    md = sweep_b.write_outputs({"command": "cmd", "methods": ["imprag", "oracle"], "rows": rows}, out)
    assert json.loads((out / "sweep.json").read_text())["rows"][1]["b"] == 3
    assert (out / "sweep.png").stat().st_size > 1000
    assert md in (out / "sweep.md").read_text()
    main = md.split("\n\n")[0].splitlines()
    assert "imprag R@5 seen" in main[0] and "oracle R@5" not in main[0]  # oracle's recall is 1 by design
    assert main[2:] == [
        "| 0 | 0.150 | 0.100 | 0.200 | 0.000 | 0.500 | 0.250 | 0.750 | 100 |",
        "| 3 | 0.450 | 0.100 | 0.200 | 0.000 | 0.500 | 0.250 | 0.750 | 103 |",
    ]
    assert "| 3 | 0.600 | 0.300 | 0.100 |" in md  # imprag recall@5 per task
