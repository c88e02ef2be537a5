"""`imprag eval`: run a method (imprag, closed-book, rag-bm25, rag-dense, oracle) over task files and
write KILT predictions, metrics.json and table.md; re-running with the same --out resumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imprag.config_io import option, same_named
from imprag.data.tasks import TASKS
from imprag.device import DEVICE_HELP, pick_device
from imprag.eval.methods import METHODS
from imprag.eval.scoring import ScoringOptions


@dataclass(kw_only=True)
class Options(ScoringOptions):
    model: Path = option(help="ImpRAG / Hugging Face model folder (or a .gguf file)")
    data: str = option(help="task file(s), KILT JSONL, comma-separated (one output folder per task)")
    task: str | None = option(
        None,
        f"task name, one for all files or comma-separated per file (default: from each file name); one of {', '.join(TASKS)}",
    )
    method: Literal[METHODS] = option(help="what to evaluate")  # type: ignore[valid-type]
    out: Path = option(help="output folder (re-run the same command to resume)")
    index: Path | None = option(None, "index folder from `imprag index` (needed by --method imprag)")
    passages: Path | None = option(
        None, "passages JSONL (rag-bm25, rag-dense, oracle; default: the file the --index was built from)"
    )
    k: int | None = option(None, "passages per question (default: the model's k, 10)", flags=("-k",))
    limit: int | None = option(None, "evaluate the first N examples of each file")
    batch_size: int = option(8, "questions per generation batch")
    max_new_tokens: int = option(32, "answer length limit in tokens")
    query_calibration: Literal["prompts", "stored"] = option(
        "prompts",
        "imprag: each prompt format's query mean from the evaluated prompts themselves (label-free, "
        "default) or the model's stored means",
    )
    fever: Literal["likelihood", "label"] = option(
        "likelihood",
        "how FEVER claims are decided: likelihood = True when the claim's log-likelihood given the "
        "method's passages is above a threshold fitted on true/false statements built from the corpus "
        "(default; no FEVER labels used); label = the paper's way, the model answers and the label whose "
        "first token it scores higher wins (closed-book always answers this way)",
    )
    cache_dir: Path | None = option(None, "retriever cache (default $IMPRAG_CACHE or ~/.cache/imprag)")
    on_error: Literal["fail", "skip"] = option("fail", "bad JSONL lines: stop (default) or skip")
    allow_fingerprint_mismatch: bool = option(
        False, "search an index built by other weights anyway (results are then meaningless for imprag)"
    )
    device: str = option("auto", DEVICE_HELP)
    model_dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights' dtype")
    precision: Literal["fp32", "bf16"] = option(
        "fp32",
        "decoding arithmetic: bf16 autocast is about 1.8x faster on CPUs with AVX512-BF16 / AMX and "
        "on GPUs; retrieval vectors stay fp32 (default fp32)",
    )
    quiet: bool = option(False, "no progress bars")


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


def run(args: Options) -> int:
    from imprag.eval.runner import EvalConfig, run_eval

    cfg = same_named(
        EvalConfig,
        args,
        data=[Path(x) for x in _split(args.data) or []],
        tasks=_split(args.task),
        normalization=args.normalize,
        device=str(pick_device(args.device)),  # EvalConfig is written to metrics.json
        show_progress=not args.quiet,
    )
    run_eval(cfg)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {args.out}/metrics.json, {args.out}/table.md and the predictions")
    return 0
