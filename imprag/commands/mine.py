"""`imprag mine`: rank a passages corpus for every example of a task file with BM25 or a dense
retriever (the whole prompt as the query) and write the candidates as JSONL pseudo labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from imprag.errors import UserError

ON_ERROR = ("fail", "skip")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passages", required=True, help='passages JSONL, one {"id","title","text"} per line'
    )
    parser.add_argument(
        "--data", required=True, help="task file (KILT JSONL or plain question/answers JSONL)"
    )
    parser.add_argument("--out", required=True, help="output JSONL: one row of ranked candidates per example")
    parser.add_argument(
        "--task",
        default=None,
        help="task name (nq, hotpotqa, trex, fever, aida, ...); default: guessed from --data's name, else nq",
    )
    # Retriever and on-error are checked in run(): a bad value gets one line and exit 2, like every other input error.
    parser.add_argument("--retriever", default="bm25", help="bm25 (default) or dense (all-MiniLM-L6-v2)")
    parser.add_argument("--top-k", type=int, default=50, help="candidates per example (default 50)")
    parser.add_argument(
        "--on-error", default="fail", help="bad input line: fail (default) or skip with a warning"
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where retriever indexes are cached (default $IMPRAG_CACHE or ~/.cache/imprag)",
    )
    parser.add_argument("--limit", type=int, default=None, help="mine only the first N examples")


def run(args: argparse.Namespace) -> int:
    from imprag.data.kilt import load_examples
    from imprag.data.mining import gold_recall, mine
    from imprag.data.tasks import get_task, task_for_file
    from imprag.io import atomic_write_jsonl
    from imprag.retrievers import RETRIEVERS

    if args.retriever not in RETRIEVERS:
        raise UserError(
            f"--retriever {args.retriever!r} is not known; choose one of: {', '.join(RETRIEVERS)}"
        )
    if args.on_error not in ON_ERROR:
        raise UserError(f"--on-error {args.on_error!r} is not known; choose one of: {', '.join(ON_ERROR)}")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    for flag, value in (("--passages", args.passages), ("--data", args.data)):
        if not Path(value).is_file():
            raise UserError(f"{value}: file not found (check {flag})")
    out = Path(args.out)
    if out.resolve() in (Path(args.passages).resolve(), Path(args.data).resolve()):
        raise UserError(f"--out {out} would overwrite an input file; choose another path")

    task = get_task(args.task or task_for_file(args.data) or "nq").name
    examples = load_examples(args.data, task, on_error=args.on_error, limit=args.limit)
    if not examples:
        raise UserError(f"{args.data}: no examples to mine (is it an empty file?)")
    rows = mine(
        examples,
        args.passages,
        retriever=args.retriever,
        top_k=args.top_k,
        cache_dir=args.cache_dir,
        on_error=args.on_error,
    )
    atomic_write_jsonl(out, rows)
    hits, total = gold_recall(rows)
    recall = (
        f"; gold passage among the candidates for {hits}/{total} ({100.0 * hits / total:.1f}%)"
        if total
        else ""
    )
    print(
        f"mined {len(rows)} {task} examples with {args.retriever} (top {len(rows[0]['candidates'])}) -> {out}{recall}"
    )
    return 0
