"""Real-data evaluation with no training: SmolLM2-135M-Instruct (b=7, t=21) on NQ dev over the shared
Wikipedia passages, every method through `imprag eval`, combined by `imprag report`.

    python benchmarks/eval_nq_smollm2.py --limit 100 -k 5            # all five methods
    python benchmarks/eval_nq_smollm2.py --methods closed-book,oracle

Each step is the printed `imprag` command; every step resumes when re-run (the index build and the
eval batches are kept), so an interrupted benchmark picks up where it stopped. On a CPU shared with
other work run it with OMP_NUM_THREADS=1: small decode steps with two OpenMP threads were 5-8x slower
here when the cores were oversubscribed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, SHARED

METHODS = ("closed-book", "rag-bm25", "rag-dense", "oracle", "imprag")


def step(cmd: list[str]) -> float:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"step failed with exit code {done.returncode}: {' '.join(cmd)}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "smollm2")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "eval")
    ap.add_argument("--data", type=Path, default=SHARED / "nq" / "dev.jsonl")
    ap.add_argument("--passages", type=Path, default=SHARED / "wiki" / "passages.jsonl")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    if not args.data.exists() or not args.passages.exists():
        raise SystemExit(f"needs the real data at {SHARED}")
    imprag = str(Path(sys.executable).with_name("imprag"))
    seconds: dict[str, float] = {}
    if not (args.model / "imprag.json").exists():
        seconds["pull"] = step([imprag, "pull", "smollm2", "--out", str(args.model)])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    index = args.out / "index-smollm2"
    if "imprag" in methods:
        seconds["index"] = step(
            [
                imprag,
                "index",
                "--model",
                str(args.model),
                "--passages",
                str(args.passages),
                "--out",
                str(index),
                "--batch-size",
                "16",
                "--chunk-size",
                "1024",
            ]  # fmt: skip
        )
    runs = []
    for method in methods:
        out = args.out / f"nq-{method}"
        cmd = [
            imprag, "eval", "--model", str(args.model), "--data", str(args.data), "--task", "nq",
            "--method", method, "--out", str(out), "-k", str(args.k), "--limit", str(args.limit),
            "--batch-size", str(args.batch_size),
        ]  # fmt: skip
        cmd += ["--index", str(index)] if method == "imprag" else ["--passages", str(args.passages)]
        seconds[method] = step(cmd)
        runs.append(str(out))
    title = f"SmolLM2-135M-Instruct, no training, NQ dev (first {args.limit}), k={args.k}"
    step([imprag, "report", *runs, "--out", str(args.out / "report"), "--title", title])
    print("wall seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
