"""`imprag report RUN_DIR... --out DIR`: combine `imprag eval` runs into a Table-2-shaped markdown table
(rows = methods, columns = tasks, cells = "EM (answer recall@k)") and a bar chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imprag.config_io import option


@dataclass(kw_only=True)
class Options:
    runs: list[Path] = option(help="run folders written by `imprag eval --out`", positional=True)
    out: Path = option(help="folder for table.md, chart.png and report.json")
    title: str = option("ImpRAG evaluation", "table heading and chart title")


def run(args: Options) -> int:
    from imprag.eval.report import build_report

    build_report(args.runs, args.out, args.title)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {args.out}/table.md, {args.out}/chart.png and {args.out}/report.json")
    return 0
