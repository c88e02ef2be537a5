"""`imprag report RUN_DIR... --out DIR`: combine `imprag eval` runs into a Table-2-shaped markdown table
(rows = methods, columns = tasks, cells = "EM (answer recall@k)") and a bar chart."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by `imprag eval --out`")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for table.md, chart.png and report.json"
    )
    parser.add_argument("--title", default="ImpRAG evaluation", help="table heading and chart title")


def run(args: argparse.Namespace) -> int:
    from imprag.eval.report import build_report

    build_report(args.runs, args.out, args.title)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {args.out}/table.md, {args.out}/chart.png and {args.out}/report.json")
    return 0
