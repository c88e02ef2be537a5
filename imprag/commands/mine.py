"""`imprag mine`: rank a passages corpus for every example of a task file with BM25 or a dense
retriever (the whole prompt as the query) and write the candidates as JSONL pseudo labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imprag.config_io import option
from imprag.errors import UserError

ON_ERROR = ("fail", "skip")


@dataclass(kw_only=True)
class Options:
    passages: str = option(help='passages JSONL, one {"id","title","text"} per line')
    data: str = option(help="task file (KILT JSONL or plain question/answers JSONL)")
    out: str = option(help="output JSONL: one row of ranked candidates per example")
    task: str | None = option(
        None, "task name (nq, hotpotqa, trex, fever, aida, ...); default: guessed from --data's name, else nq"
    )
    # retriever and on-error are checked in run(), whose errors name the choices
    retriever: str = option("bm25", "bm25 (default) or dense (all-MiniLM-L6-v2)")
    top_k: int = option(50, "candidates per example")
    on_error: str = option("fail", "bad input line: fail (default) or skip with a warning")
    cache_dir: str | None = option(
        None, "where retriever indexes are cached (default $IMPRAG_CACHE or ~/.cache/imprag)"
    )
    limit: int | None = option(None, "mine only the first N examples")


def run(args: Options) -> int:
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
