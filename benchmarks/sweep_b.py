"""Layer-boundary sweep (issue 6): answer recall@5 and EM of the demo against b, like the paper's Figure 2.

    OMP_NUM_THREADS=1 python benchmarks/sweep_b.py [--size small] [--bs 0,1,2,3,4] [--methods imprag,oracle]
        [--warmup-steps N] [--distill-steps N] [--eval-limit N] [--out runs/sweep_b]

One synthetic world (the demo's seed) and its BM25 labels are made once in OUT/base and copied into every
OUT/b{b}; then each b runs the demo pipeline (imprag.demo.pipeline.Demo) with only b changed: t stays at N-1,
the random backbone, data order, step counts and evaluation are the same. Each run resumes on a re-run.
Writes OUT/sweep.json, OUT/sweep.md (a b x metrics table) and OUT/sweep.png.

Seen/unseen follow the paper's Table 2 (the `group` of each task in its metrics.json): seen = the QA format
(NQ, HotpotQA trained on; SimpleQA, 2Wiki), unseen = T-REx, zsRE, FEVER, AIDA.

Cuts for the run in docs/benchmarks.md (2 shared cores, OMP_NUM_THREADS=1, another job running):
--warmup-steps 130 --distill-steps 10 --eval-limit 50 (the small size's defaults are 260, 40 and 100).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import sys
from pathlib import Path
from statistics import mean
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECALL = "answer_recall@5"
GROUPS = ("seen", "unseen")
NO_RECALL = ("oracle", "closed-book")  # oracle's recall is 1 by construction; closed-book retrieves nothing


def collect(run: Path, methods: list[str]) -> dict[str, Any]:
    """One b's numbers from its demo folder: per-task and per-group EM / answer recall@5, training time."""
    from imprag.data.tasks import EVAL_TASKS

    row: dict[str, Any] = {"tasks": {}}
    for method in methods:
        per_task: dict[str, dict[str, Any]] = {}
        for task in EVAL_TASKS:  # the paper's column order
            path = run / "eval" / f"{method}-{task}" / "metrics.json"
            if path.exists():
                res = json.loads(path.read_text())["tasks"][task]
                m = res["metrics"]
                per_task[task] = {"group": res["group"], "em": m["em"], RECALL: m.get(RECALL)}
        row["tasks"][method] = per_task
        for metric in ("em", RECALL):
            for group in GROUPS:
                vals = [r[metric] for r in per_task.values() if r["group"] == group and r[metric] is not None]
                row[f"{method} {metric} {group}"] = mean(vals) if vals else None
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    row["train_s"] = max(r["elapsed"] for r in rows if "elapsed" in r)
    evals = [r for r in rows if "eval" in r]
    row["dev recall@5"] = evals[-1]["eval"].get("recall@5") if evals else None
    return row


def columns(methods: list[str]) -> list[tuple[str, str]]:
    """(key in a row, column header) for the main table."""
    cols = [(f"{m} {RECALL} {g}", f"{m} R@5 {g}") for m in methods if m not in NO_RECALL for g in GROUPS]
    cols += [(f"{m} em {g}", f"{m} EM {g}") for m in methods for g in GROUPS]
    return cols + [("dev recall@5", "dev gold R@5"), ("train_s", "train s")]


def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}" if key == "train_s" else f"{v:.3f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per b with the group averages, then imprag's answer recall@5 per task."""
    rows, methods = results["rows"], results["methods"]
    cols = columns(methods)
    lines = [
        "| b | " + " | ".join(h for _, h in cols) + " |",
        "|---:|" + "---:|" * len(cols),
    ]
    lines += [f"| {r['b']} | " + " | ".join(_fmt(r.get(k), k) for k, _ in cols) + " |" for r in rows]
    if "imprag" in methods and rows:
        tasks = list(rows[0]["tasks"]["imprag"])
        lines += ["", "imprag answer recall@5 per task:", ""]
        lines += ["| b | " + " | ".join(tasks) + " |", "|---:|" + "---:|" * len(tasks)]
        for r in rows:
            per = r["tasks"]["imprag"]
            lines.append(
                f"| {r['b']} | " + " | ".join(_fmt(per.get(t, {}).get(RECALL)) for t in tasks) + " |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Two panels against b: answer recall@5 (imprag, seen/unseen) and EM (each method, seen/unseen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, methods = results["rows"], results["methods"]
    bs = [r["b"] for r in rows]

    def line(ax, key: str, style: str, **kw) -> None:
        ax.plot(bs, [float("nan") if r.get(key) is None else r[key] for r in rows], style, **kw)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for ax, metric, name in zip(axes, (RECALL, "em"), ("answer recall@5", "EM")):
        for m in methods:
            if metric == RECALL and m in NO_RECALL:
                continue
            for g, style in zip(GROUPS, ("-o", "--s")):
                line(ax, f"{m} {metric} {g}", style, label=f"{m} {g}")
        if metric == RECALL:  # what training watched: the gold passage in the top 5, NQ dev
            line(ax, "dev recall@5", ":^", c="grey", label="NQ dev gold-passage R@5")
        ax.set_xlabel("b (layer whose query/key states retrieve)")
        ax.set_ylabel(name)
        ax.set_xticks(bs)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(results.get("title", "layer-boundary sweep"), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> str:
    """OUT/sweep.json, OUT/sweep.md and OUT/sweep.png; returns the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    head = f"# {results.get('title', 'layer-boundary sweep')}\n\n"
    (out / "sweep.md").write_text(head + f"```\n{results.get('command', '')}\n```\n\n" + md)
    plot(results, out / "sweep.png")
    return md


def main() -> None:
    sys.path.insert(0, str(REPO))
    from imprag.demo.pipeline import SIZES, Demo, DemoConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", choices=list(SIZES))
    ap.add_argument("--bs", default=None, help="comma-separated b values (default: 0..N-2, t = N-1)")
    ap.add_argument("--methods", default="imprag,oracle")
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--distill-steps", type=int)
    ap.add_argument("--eval-limit", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "sweep_b")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    base = SIZES[args.size]
    t = base.layers - 1
    bs = [int(x) for x in args.bs.split(",")] if args.bs else list(range(t))
    methods = args.methods.split(",")
    overrides = {
        k: v
        for k, v in (
            ("warmup_steps", args.warmup_steps),
            ("distill_steps", args.distill_steps),
            ("eval_limit", args.eval_limit),
        )
        if v is not None
    }
    command = "OMP_NUM_THREADS=1 python benchmarks/sweep_b.py " + shlex.join(sys.argv[1:])

    # the world and BM25 labels do not depend on b: make them once, copy them into each run
    shared = Demo(DemoConfig(out=args.out / "base", size=args.size, seed=args.seed))
    shared.make_worlds()
    shared.mine()
    rows = []
    for b in bs:
        run = args.out / f"b{b}"
        for name in ("world", "mined", "cache"):
            if (args.out / "base" / name).exists() and not (run / name).exists():
                shutil.copytree(args.out / "base" / name, run / name)
        demo = Demo(DemoConfig(out=run, size=args.size, seed=args.seed, methods=methods))
        demo.size = dataclasses.replace(base, b=b, t=t, **overrides)
        logging.info("=== b=%d t=%d -> %s", b, t, run)
        demo.run()
        rows.append({"b": b, "t": t, **collect(run, methods)})

    size = {k: v for k, v in dataclasses.asdict(dataclasses.replace(base, **overrides)).items() if k != "b"}
    results = {
        "title": f"imprag demo ({args.size}, N={base.layers}, t={t}): answer recall@5 and EM against b",
        "command": command,
        "size": size,
        "seed": args.seed,
        "methods": methods,
        "rows": rows,
    }
    print(write_outputs(results, args.out))
    print(command)


if __name__ == "__main__":
    main()
