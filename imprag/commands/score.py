"""`imprag score`: score any KILT-format prediction file against a gold task file (imprag.eval.scoring)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from imprag.config_io import option
from imprag.data.tasks import TASKS
from imprag.errors import UserError
from imprag.eval.scoring import ScoringOptions, format_scores, score_files
from imprag.io import atomic_write_json


@dataclass(kw_only=True)
class Options(ScoringOptions):
    predictions: str = option(help="KILT-format predictions JSONL ({id, output: [{answer, provenance}]})")
    gold: str = option(help="gold task file (KILT JSONL, or {question, answers} JSONL)")
    task: str | None = option(
        None, f"task name (default: guessed from the gold file name); one of {', '.join(TASKS)}"
    )
    out: str | None = option(None, "write the metrics here as JSON")
    json: bool = option(False, "print the metrics as JSON instead of a table")
    passages: str | None = option(
        None, "passages JSONL ({id, title, text}) to look up provenance text for answer recall"
    )
    k: list[int] = option(
        help="recall@k for these k, comma-separated (default 1,5,10)", default_factory=lambda: [1, 5, 10]
    )
    on_error: Literal["fail", "skip"] = option(
        "fail", "lines that are not valid JSON: stop (default) or skip"
    )


def run(args: Options) -> int:
    if not args.k or min(args.k) < 1:
        raise UserError(f"--k: expected comma-separated positive integers such as 1,5,10, got {args.k}")
    result = score_files(
        args.predictions,
        args.gold,
        task=args.task,
        passages=args.passages,
        ks=sorted(set(args.k)),
        match=args.match,
        on_error=args.on_error,
        normalization=args.normalize,
    )
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2) if args.json else format_scores(result))
    return 0
