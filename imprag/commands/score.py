"""`imprag score`: score any KILT-format prediction file against a gold task file (imprag.eval.scoring)."""

from __future__ import annotations

import argparse
import json

from imprag.data.tasks import TASKS
from imprag.errors import UserError
from imprag.eval.metrics import MATCH_MODES, NORMALIZATIONS
from imprag.eval.scoring import format_scores, score_files
from imprag.io import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions",
        required=True,
        help="KILT-format predictions JSONL ({id, output: [{answer, provenance}]})",
    )
    parser.add_argument(
        "--gold", required=True, help="gold task file (KILT JSONL, or {question, answers} JSONL)"
    )
    parser.add_argument(
        "--task",
        default=None,
        help=f"task name (default: guessed from the gold file name); one of {', '.join(TASKS)}",
    )
    parser.add_argument("--out", default=None, help="write the metrics here as JSON")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    parser.add_argument(
        "--passages",
        default=None,
        help="passages JSONL ({id, title, text}) to look up provenance text for answer recall",
    )
    parser.add_argument("--k", default="1,5,10", help="comma-separated k for recall@k (default 1,5,10)")
    parser.add_argument(
        "--match",
        choices=MATCH_MODES,
        default="word",
        help="answer-recall matching (default word boundaries; accents and Unicode punctuation folded)",
    )
    parser.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="kilt",
        help="EM/F1 answer normalisation: kilt = the official KILT/SQuAD rule (default); unicode = also "
        "fold accents and Unicode punctuation (not comparable with published numbers)",
    )
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="lines that are not valid JSON: stop (default) or skip",
    )


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(
            f"--k: expected comma-separated positive integers such as 1,5,10, got {text!r}"
        ) from None
    if not ks or ks[0] < 1:
        raise UserError(f"--k: expected comma-separated positive integers such as 1,5,10, got {text!r}")
    return ks


def run(args: argparse.Namespace) -> int:
    result = score_files(
        args.predictions,
        args.gold,
        task=args.task,
        passages=args.passages,
        ks=_parse_ks(args.k),
        match=args.match,
        on_error=args.on_error,
        normalization=args.normalize,
    )
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2) if args.json else format_scores(result))
    return 0
