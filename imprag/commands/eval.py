"""`imprag eval`: run a method (imprag, closed-book, rag-bm25, rag-dense, oracle) over task files and
write KILT predictions, metrics.json and table.md; re-running with the same --out resumes."""

from __future__ import annotations

import argparse
from pathlib import Path

from imprag.data.tasks import TASKS
from imprag.device import DEVICE_HELP, pick_device
from imprag.eval.methods import METHODS
from imprag.eval.metrics import MATCH_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, required=True, help="ImpRAG / Hugging Face model folder (or a .gguf file)"
    )
    parser.add_argument(
        "--data", required=True, help="task file(s), KILT JSONL, comma-separated (one output folder per task)"
    )
    parser.add_argument(
        "--task",
        default=None,
        help=f"task name, one for all files or comma-separated per file (default: from each file name); one of {', '.join(TASKS)}",
    )
    parser.add_argument("--method", required=True, choices=METHODS, help="what to evaluate")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (re-run the same command to resume)"
    )
    parser.add_argument(
        "--index",
        type=Path,
        default=None,
        help="index folder from `imprag index` (needed by --method imprag)",
    )
    parser.add_argument(
        "--passages",
        type=Path,
        default=None,
        help="passages JSONL (rag-bm25, rag-dense, oracle; default: the file the --index was built from)",
    )
    parser.add_argument(
        "-k", "--k", type=int, default=None, help="passages per question (default: the model's k, 10)"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N examples of each file")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="questions per generation batch (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="answer length limit in tokens (default 32)"
    )
    parser.add_argument(
        "--match",
        choices=MATCH_MODES,
        default="word",
        help="answer-recall matching (default: word boundaries; accents and Unicode punctuation folded)",
    )
    parser.add_argument(
        "--normalize",
        choices=("kilt", "unicode"),
        default="kilt",
        help="EM/F1 answer normalisation: kilt = the official KILT/SQuAD rule (default); unicode = also "
        "fold accents and Unicode punctuation (not comparable with published numbers)",
    )
    parser.add_argument(
        "--query-calibration",
        choices=("prompts", "stored"),
        default="prompts",
        help="imprag: each prompt format's query mean from the evaluated prompts themselves (label-free, "
        "default) or the model's stored means",
    )
    parser.add_argument(
        "--fever",
        choices=("likelihood", "label"),
        default="likelihood",
        help="how FEVER claims are decided: likelihood = True when the claim's log-likelihood given the "
        "method's passages is above a threshold fitted on true/false statements built from the corpus "
        "(default; no FEVER labels used); label = the paper's way, the model answers and the label whose "
        "first token it scores higher wins (closed-book always answers this way)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="retriever cache (default $IMPRAG_CACHE or ~/.cache/imprag)",
    )
    parser.add_argument(
        "--on-error", choices=("fail", "skip"), default="fail", help="bad JSONL lines: stop (default) or skip"
    )
    parser.add_argument(
        "--allow-fingerprint-mismatch",
        action="store_true",
        help="search an index built by other weights anyway (results are then meaningless for imprag)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--model-dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="weights' dtype (default float32)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="decoding arithmetic: bf16 autocast is about 1.8x faster on CPUs with AVX512-BF16 / AMX and "
        "on GPUs; retrieval vectors stay fp32 (default fp32)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> int:
    from imprag.eval.runner import EvalConfig, run_eval

    device = str(pick_device(args.device))  # EvalConfig is written to metrics.json
    cfg = EvalConfig(
        model=args.model,
        data=[Path(x) for x in _split(args.data) or []],
        method=args.method,
        out=args.out,
        tasks=_split(args.task),
        index=args.index,
        passages=args.passages,
        k=args.k,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        match=args.match,
        query_calibration=args.query_calibration,
        normalization=args.normalize,
        on_error=args.on_error,
        cache_dir=args.cache_dir,
        allow_fingerprint_mismatch=args.allow_fingerprint_mismatch,
        device=device,
        model_dtype=args.model_dtype,
        precision=args.precision,
        fever=args.fever,
        show_progress=not args.quiet,
    )
    run_eval(cfg)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {args.out}/metrics.json, {args.out}/table.md and the predictions")
    return 0
