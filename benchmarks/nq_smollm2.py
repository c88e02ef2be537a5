"""Real-data benchmark: ImpRAG fine-tuning of SmolLM2-135M (b=7, t=29) on NQ, evaluated on NQ dev and HotpotQA dev against RA-IT (rag-bm25, rag-dense) and closed-book, all
reading with the same fine-tuned LM, over the 12,585 shared Wikipedia passages.

    python benchmarks/nq_smollm2.py --profile cpu --threads 2     # 2 CPU cores, 84 min from scratch (cuts below)
    python benchmarks/nq_smollm2.py --profile gpu                 # one GPU (steps timed on one H100 below)
    python benchmarks/nq_smollm2.py --profile cpu --only retrieval,eval   # some steps only

Steps (each prints the `imprag` command it runs; each resumes or is skipped when its output exists, so
an interrupted run is re-run with the same command):

    pull       imprag pull smollm2                        (once; a converted copy is reused)
    mine       imprag mine --retriever dense|bm25         candidates for nq/train.jsonl (top 50; the reader
                                                          reads BM25's)
    train      imprag train --config configs/nq_smollm2_<profile>.yaml
    index      imprag index                               the 12,585 passages with the trained bottom layers
    retrieval  in-process: answer / gold-passage recall@1/5/10/20 of the implicit query, BM25 and dense on
               the whole of nq/dev (500) and hotpotqa/dev (100) (cheap: no generation)
    eval       imprag eval --method imprag|rag-bm25|rag-dense|closed-book on both dev files (--limit)
    report     imprag report + OUT/summary.md (EM, answer recall, retrieval table, training cost)

CPU profile (configs/nq_smollm2_cpu.yaml, the demo's recipe on real data): the cached warmup (3,000
steps over the 12,585 passages' cached layer-7 inputs, gold labels, title pseudo-queries), then 60
reader steps (8 questions reading BM25's top 5 through layers 7..29, the retrieval path frozen, no
gradient through the passages' own forward, bf16 autocast). The index is the warmup's stored vectors
(seconds). Measured from scratch on 2 cores, 2 threads (docs/benchmarks.md): mining 7.5 min (MiniLM
embeds the corpus once), the layer-7 cache 14 min (reused by a later run with the same weights, b, l_max
and k, or from `--cached_warmup.cache_dir`), warmup 6 min, reader 6 min, index 10 s, evaluation of all
500 / 100 dev questions 49 min (40 of them rag-bm25 and rag-dense). What it cuts against the GPU
profile (configs/nq_smollm2_gpu.yaml, the same recipe, not yet run on a GPU): 5 of k=10 passages read;
3,000 warmup steps (GPU 5,000); 60 reader steps (~0.3 epoch; GPU 3 epochs at batch 32); no gradient
through the passages' own forward. `--nq-limit` / `--hotpot-limit` cut the evaluated questions. `--retrievers bm25` leaves the dense
retriever out of the retrieval table (it embeds the corpus once: ~4 min on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, SHARED

STEPS = ("pull", "mine", "train", "index", "retrieval", "eval", "report")
METHODS = ("imprag", "rag-bm25", "rag-dense", "closed-book")
RETRIEVERS = ("dense", "bm25")
KS = (1, 5, 10, 20)
PROFILES: dict[str, dict[str, Any]] = {
    # train_labels: the mined files the training config lists, in its order
    "cpu": {
        "nq_limit": None,
        "hotpot_limit": None,
        "k": 5,
        "batch_size": 16,
        "index_batch": 32,
        "precision": "bf16",
        "train_labels": ("bm25",),
    },
    "gpu": {
        "nq_limit": None,
        "hotpot_limit": None,
        "k": 10,
        "batch_size": 64,
        "index_batch": 256,
        "precision": "bf16",
        "train_labels": ("bm25",),
    },
}


def step(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run one printed command from the repository root; stop the benchmark if it fails. Returns its wall
    seconds and peak resident memory (MiB)."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"step failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024  # Linux: KiB


def recall_table(
    model_dir: Path,
    index_dir: Path,
    untrained: tuple[Path, Path] | None,
    data: dict[str, Path],
    passages: Path,
    cache_dir: Path,
    retrievers: tuple[str, ...] = RETRIEVERS,
) -> dict[str, Any]:
    """Answer and gold-passage recall@k of the implicit query (trained, and untrained when given), BM25 and
    dense, each question's whole prompt as the explicit retrievers' query, over every dev question."""
    import torch

    from imprag.data.kilt import load_examples
    from imprag.eval.methods import PassageLookup
    from imprag.eval.metrics import answer_recall
    from imprag.index.faiss_index import Index
    from imprag.model.imprag import ImpRAG
    from imprag.retrievers import load_retriever

    top = max(KS)
    examples = {name: load_examples(path, name, require_answers=True) for name, path in data.items()}
    ranked: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}  # system -> task -> per question passages
    systems = [("imprag", model_dir, index_dir)]
    if untrained is not None:
        systems.append(("imprag (untrained)", untrained[0], untrained[1]))
    for label, mdir, idir in systems:
        model = ImpRAG.from_pretrained(mdir, device="cuda" if torch.cuda.is_available() else None)
        index = Index.load(idir, model=model)
        ranked[label] = {
            name: index.retrieve(model, [e.prompt for e in exs], k=top) for name, exs in examples.items()
        }
    lookup = PassageLookup(passages)
    for name in retrievers:
        retriever = load_retriever(name, passages, cache_dir=cache_dir)
        ranked[name] = {}
        for task, exs in examples.items():
            ids, _ = retriever.search([e.prompt for e in exs], top)
            ranked[name][task] = [[lookup.get(pid) for pid in row] for row in ids]
    out: dict[str, Any] = {}
    for label, per_task in ranked.items():
        out[label] = {}
        for task, rows in per_task.items():
            exs = examples[task]
            m: dict[str, float] = {"n": len(exs)}
            for k in KS:
                ans = [answer_recall(e.answers, r, k) for e, r in zip(exs, rows)]
                m[f"answer_recall@{k}"] = sum(a or 0.0 for a in ans) / len(exs)
                gold = [
                    (g, {str(p["id"]) for p in r[:k]})
                    for e, r in zip(exs, rows)
                    if (g := {p.passage_id for p in e.provenance if p.passage_id})
                ]
                m[f"gold_recall@{k}"] = sum(bool(g & got) for g, got in gold) / max(1, len(gold))
            out[label][task] = m
    return out


def recall_markdown(table: dict[str, Any]) -> str:
    lines = []
    tasks = list(next(iter(table.values())))
    for task in tasks:
        n = next(iter(table.values()))[task]["n"]
        lines += [
            f"**{task} dev, all {n} questions** (answer recall / gold-passage recall, %)",
            "",
            "| retriever | "
            + " | ".join(f"ans R@{k}" for k in KS)
            + " | "
            + " | ".join(f"gold R@{k}" for k in KS)
            + " |",
            "|---|" + "---:|" * (2 * len(KS)),
        ]
        for label, per_task in table.items():
            m = per_task[task]
            cells = [f"{100 * m[f'answer_recall@{k}']:.1f}" for k in KS]
            cells += [f"{100 * m[f'gold_recall@{k}']:.1f}" for k in KS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def training_cost(train_dir: Path) -> dict[str, Any]:
    """Tokens and wall time of the training run (its metrics.jsonl), and the machine it ran on."""
    rows = []
    path = train_dir / "metrics.jsonl"
    if path.exists():
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "loss" in r]
    last = steps[-1] if steps else {}
    hw = train_dir / "hardware.json"
    return {
        "steps": last.get("step"),
        "tokens": last.get("tokens"),
        "seconds": last.get("elapsed"),
        "tokens_per_s": round(last["tokens"] / last["elapsed"], 1) if last.get("elapsed") else None,
        "first_loss": steps[0].get("loss") if steps else None,
        "last_loss": last.get("loss"),
        "hardware": json.loads(hw.read_text())["hardware"] if hw.exists() else "not recorded",
    }


def hardware(env: dict[str, str]) -> str:
    """The machine a step ran on: the GPU(s), else the CPU with its core count and OpenMP threads."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    threads = env.get("OMP_NUM_THREADS", f"default ({torch.get_num_threads()})")
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, OMP_NUM_THREADS {threads}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=tuple(PROFILES), default="cpu")
    ap.add_argument(
        "--config", type=Path, default=None, help="train config (default configs/nq_smollm2_<profile>.yaml)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="default runs/nq_smollm2 (cpu) or runs/nq_smollm2_gpu"
    )
    ap.add_argument(
        "--model", type=Path, default=REPO / ".cache" / "smollm2", help="SmolLM2 folder (pulled if absent)"
    )
    ap.add_argument("--data-dir", type=Path, default=SHARED)
    ap.add_argument("--cache-dir", type=Path, default=None, help="retriever cache (default ~/.cache/imprag)")
    ap.add_argument("--nq-limit", type=int, default=None, help="NQ dev questions generated (profile default)")
    ap.add_argument("--hotpot-limit", type=int, default=None, help="HotpotQA dev questions generated")
    ap.add_argument("-k", type=int, default=None, help="passages read per question in eval (profile default)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--retrievers",
        default=",".join(RETRIEVERS),
        help="explicit retrievers in the retrieval table (dense embeds the corpus once: ~4 min on 2 idle cores)",
    )
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps of {', '.join(STEPS)}")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (1 on a shared CPU)")
    ap.add_argument(
        "--untrained-index",
        type=Path,
        default=None,
        help="an index of the *untrained* model (imprag index --model MODEL): adds its implicit-query recall",
    )
    ap.add_argument(
        "--untrained-model",
        type=Path,
        default=None,
        help="the model that built --untrained-index (default --model)",
    )
    args = ap.parse_args()
    prof = PROFILES[args.profile]
    out = args.out or REPO / "runs" / ("nq_smollm2" if args.profile == "cpu" else "nq_smollm2_gpu")
    config = args.config or REPO / "configs" / f"nq_smollm2_{args.profile}.yaml"
    passages = args.data_dir / "wiki" / "passages.jsonl"
    dev = {"nq": args.data_dir / "nq" / "dev.jsonl", "hotpotqa": args.data_dir / "hotpotqa" / "dev.jsonl"}
    train_file = args.data_dir / "nq" / "train.jsonl"
    for p in (passages, train_file, *dev.values()):
        if not p.exists():
            raise SystemExit(f"needs the real data: {p} is missing (see ../shared/data/README.md)")
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - set(STEPS):
        raise SystemExit(f"--only: unknown steps {sorted(only - set(STEPS))}; choose from {', '.join(STEPS)}")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    imprag = [sys.executable, "-m", "imprag"]  # works where the package is on PYTHONPATH, not installed
    cache = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    seconds: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def record(name: str, secs: float, add: bool = True) -> None:
        # re-read first: two runs of this script (e.g. --methods split over two processes) share the file
        if timings_path.exists():
            seconds.update(json.loads(timings_path.read_text()))
        seconds[name] = round((seconds.get(name, 0.0) if add else 0.0) + secs, 1)
        timings_path.write_text(json.dumps(seconds, indent=1))

    peaks_path = out / "peak_rss_mib.json"

    def timed(name: str, cmd: list[str]) -> None:
        secs, peak = step(cmd, env)
        record(name, secs)
        peaks = json.loads(peaks_path.read_text()) if peaks_path.exists() else {}
        peaks[name] = round(max(peak, peaks.get(name, 0.0)))
        peaks_path.write_text(json.dumps(peaks, indent=1))

    if "pull" in only and not (args.model / "imprag.json").exists():
        timed("pull", [*imprag, "pull", "smollm2", "--out", str(args.model)])
    mined = {r: out / "mined" / f"nq-train-{r}.jsonl" for r in RETRIEVERS}
    if "mine" in only:
        for r, path in mined.items():
            if not path.exists():
                timed(
                    f"mine-{r}",
                    [
                        *imprag,
                        "mine",
                        "--passages",
                        str(passages),
                        "--data",
                        str(train_file),
                        "--task",
                        "nq",
                        "--retriever",
                        r,
                        "--top-k",
                        "50",
                        "--out",
                        str(path),
                        *cache,
                    ],
                )
    train_dir = out / "train"
    final = train_dir / "final"
    if "train" in only and not final.exists():
        overrides = [
            "--out",
            str(train_dir),
            "--model.path",
            str(args.model),
            "--data.passages",
            str(passages),
        ]
        for i, r in enumerate(prof["train_labels"]):
            overrides += [f"--data.retrieval.{i}.path", str(mined[r])]
        if args.profile == "gpu":  # gold-passage recall on NQ dev during training (cheap on a GPU)
            overrides += ["--eval.dev", str(dev["nq"])]
        timed("train", [*imprag, "train", "--config", str(config), *overrides, "--resume", "true"])
        (train_dir / "hardware.json").write_text(json.dumps({"hardware": hardware(env)}))
    index_dir = out / "index"
    if "index" in only and not (index_dir / "metadata.json").exists():
        timed(
            "index",
            [
                *imprag,
                "index",
                "--model",
                str(final),
                "--passages",
                str(passages),
                "--out",
                str(index_dir),
                "--batch-size",
                str(prof["index_batch"]),
            ],
        )
    if "retrieval" in only:
        start = time.perf_counter()
        untrained = (
            None
            if args.untrained_index is None
            else (args.untrained_model or args.model, args.untrained_index)
        )
        table = recall_table(
            final,
            index_dir,
            untrained,
            dev,
            passages,
            args.cache_dir or Path(os.environ.get("IMPRAG_CACHE", Path.home() / ".cache" / "imprag")),
            tuple(r.strip() for r in args.retrievers.split(",") if r.strip()),
        )
        (out / "retrieval.json").write_text(json.dumps(table, indent=1))
        (out / "retrieval.md").write_text(recall_markdown(table))
        print(recall_markdown(table))
        record("retrieval", time.perf_counter() - start, add=False)
    k = args.k or prof["k"]
    limits = {"nq": args.nq_limit or prof["nq_limit"], "hotpotqa": args.hotpot_limit or prof["hotpot_limit"]}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs: list[Path] = []
    for task, path in dev.items():
        for method in methods:
            run_dir = out / "eval" / f"{task}-{method}"
            runs.append(run_dir)
            if "eval" not in only or (run_dir / "metrics.json").exists():
                continue
            cmd = [
                *imprag,
                "eval",
                "--model",
                str(final),
                "--data",
                str(path),
                "--task",
                task,
                "--method",
                method,
                "--out",
                str(run_dir),
                "-k",
                str(k),
                "--batch-size",
                str(prof["batch_size"]),
                "--precision",
                prof["precision"],
                "--passages",
                str(passages),
                *cache,
                "--quiet",
            ]
            if limits[task]:
                cmd += ["--limit", str(limits[task])]
            if method == "imprag":
                cmd += ["--index", str(index_dir)]
            timed(f"eval-{task}-{method}", cmd)
    if "report" in only:
        done = [r for r in runs if (r / "metrics.json").exists()]
        if done:
            timed(
                "report",
                [
                    *imprag,
                    "report",
                    "--out",
                    str(out / "report"),
                    "--title",
                    f"SmolLM2-135M ImpRAG ({args.profile} recipe)",
                    *map(str, done),
                ],
            )
        write_summary(out, done, k, limits, seconds)


def write_summary(
    out: Path, runs: list[Path], k: int, limits: dict[str, int | None], seconds: dict[str, float]
) -> None:
    """OUT/summary.md: EM and answer recall per method and task, the retrieval table, training cost, timings."""
    lines = ["# SmolLM2-135M ImpRAG on NQ / HotpotQA dev", ""]
    if runs:
        lines += [
            f"Generation: k = {k}; questions per task: "
            + ", ".join(f"{t} {'all' if n is None else f'first {n}'}" for t, n in limits.items())
            + "; EM and answer recall in %.",
            "",
            "| task | method | n | EM | F1 | ans R@1 | ans R@5 | ans R@10 |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            doc = json.loads((r / "metrics.json").read_text())
            for task, t in doc["tasks"].items():
                m = t["metrics"]

                def pct(key: str, m: dict[str, Any] = m) -> str:
                    return "-" if m.get(key) is None else f"{100 * m[key]:.1f}"

                lines.append(
                    f"| {task} | {doc['method']} | {t['n']} | {pct('em')} | {pct('f1')} | "
                    f"{pct('answer_recall@1')} | {pct('answer_recall@5')} | {pct('answer_recall@10')} |"
                )
        lines.append("")
    if (out / "retrieval.md").exists():
        lines += ["## Retrieval over the 12,585 passages", "", (out / "retrieval.md").read_text()]
    cost = training_cost(out / "train")
    lines += [
        "## Training cost",
        "",
        "```",
        json.dumps(cost, indent=1),
        "```",
        "",
        "## Step wall times (s)",
        "",
        "```",
        json.dumps(seconds, indent=1),
        "```",
        "",
    ]
    if (out / "peak_rss_mib.json").exists():
        lines += [
            "## Peak resident memory per step (MiB)",
            "",
            "```",
            (out / "peak_rss_mib.json").read_text(),
            "```",
            "",
        ]
    (out / "summary.md").write_text("\n".join(lines))
    print(f"wrote {out / 'summary.md'}")


if __name__ == "__main__":
    main()
