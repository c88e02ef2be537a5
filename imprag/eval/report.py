"""Combine `imprag eval` runs into one table shaped like the paper's Table 2 (rows = methods, columns =
tasks, cells = "EM (answer recall@k)") and a bar chart.

Runs of the same method over different tasks merge into one row; when two runs of one method cover
the same task, the later one gets its own row labelled with its folder name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imprag.data.tasks import EVAL_TASKS, TASKS
from imprag.errors import UserError
from imprag.io import read_json

log = logging.getLogger(__name__)

# the paper's row order: baselines first, then ImpRAG; the oracle upper bound last
ROW_ORDER = ("closed-book", "rag-bm25", "rag-dense", "imprag", "oracle")

DISPLAY = {
    "nq": "NQ",
    "hotpotqa": "HotpotQA",
    "simpleqa": "SimpleQA",
    "2wikimultihopqa": "2Wiki",
    "triviaqa": "TriviaQA",
    "trex": "T-REx",
    "zsre": "zsRE",
    "fever": "FEVER",
    "aida": "AIDA",
    "wned": "WNED",
    "cweb": "CWEB",
}


@dataclass
class Cell:
    em: float | None  # 0..1
    recall: float | None  # answer recall@k, 0..1; None for closed-book / not applicable
    n: int
    k: int


@dataclass
class Row:
    label: str
    method: str
    cells: dict[str, Cell] = field(default_factory=dict)  # task column -> cell
    sources: list[str] = field(default_factory=list)  # run folders
    normalization: str = "kilt"  # EM/F1 rule of its runs

    @property
    def ks(self) -> list[int]:
        return sorted({c.k for c in self.cells.values()})


def load_run(run_dir: str | Path) -> dict[str, Any]:
    d = Path(run_dir)
    path = d / "metrics.json"
    if not d.is_dir():
        raise UserError(f"{d}: run folder not found (give folders written by `imprag eval --out`)")
    if not path.exists():
        raise UserError(
            f"{d}: no metrics.json (not a finished `imprag eval` run; re-run its eval command to finish it)"
        )
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict) or "method" not in doc:
        raise UserError(f"{path}: not an `imprag eval` metrics file (expected `method` and `tasks`)")
    return doc


def collect(run_dirs: Sequence[str | Path]) -> list[Row]:
    """Runs -> table rows in ROW_ORDER (then first appearance)."""
    if not run_dirs:
        raise UserError("give at least one run folder")
    rows: list[Row] = []
    for d in run_dirs:
        doc = load_run(d)
        method = str(doc["method"])
        norm = str(doc.get("normalization", "kilt"))  # a run that used --normalize unicode says so
        for name, t in doc["tasks"].items():
            task = str(t.get("task", name))
            m = t.get("metrics", {})
            k = int(doc.get("k", 0))
            cell = Cell(m.get("em"), m.get(f"answer_recall@{k}"), int(t.get("n", m.get("n", 0))), k)
            row = next(
                (r for r in rows if r.method == method and r.normalization == norm and task not in r.cells),
                None,
            )
            if row is None:
                taken = {r.label for r in rows}
                base = method if norm == "kilt" else f"{method} [{norm} EM]"
                label = base if base not in taken else f"{base} ({Path(d).name})"
                n = 2
                while label in taken:
                    label, n = f"{base} ({Path(d).name} {n})", n + 1
                row = Row(label, method, normalization=norm)
                rows.append(row)
            row.cells[task] = cell
            if str(d) not in row.sources:
                row.sources.append(str(d))
    order = {m: i for i, m in enumerate(ROW_ORDER)}
    return sorted(rows, key=lambda r: order.get(r.method, len(order)))


def columns(rows: list[Row]) -> list[str]:
    """Tasks present in any row: the paper's Table 2 order first, then any other."""
    present = {t for r in rows for t in r.cells}
    known = [t for t in EVAL_TASKS if t in present]
    return known + sorted(present - set(known))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def average(row: Row, cols: list[str]) -> tuple[float | None, float | None, bool]:
    """Mean EM and mean recall over the row's tasks among `cols`; the flag says whether every column counted."""
    cells = [row.cells[t] for t in cols if t in row.cells]
    ems = [c.em for c in cells if c.em is not None]
    recs = [c.recall for c in cells if c.recall is not None]
    em = sum(ems) / len(ems) if ems else None
    rec = sum(recs) / len(recs) if recs else None
    return em, rec, len(ems) == len(cols)


def _cell(em: float | None, rec: float | None) -> str:
    return _pct(em) if rec is None else f"{_pct(em)} ({_pct(rec)})"


def _examples(rows: list[Row], cols: list[str]) -> str:
    """The examples per cell: one number when every cell has it, else each format's ("NQ 32, FEVER 16"),
    with each size a format's cells have ("NQ 8/32")."""
    ns = {t: sorted({r.cells[t].n for r in rows if t in r.cells}) for t in cols}
    every = sorted({n for v in ns.values() for n in v})
    if len(every) <= 1:
        return ", ".join(map(str, every))
    return ", ".join(f"{DISPLAY.get(t, t)} {'/'.join(map(str, v))}" for t, v in ns.items())


def format_table(rows: list[Row], title: str = "ImpRAG evaluation") -> str:
    cols = columns(rows)
    seen = [DISPLAY.get(t, t) for t in cols if TASKS.get(t) is not None and TASKS[t].group == "seen"]
    unseen = [DISPLAY.get(t, t) for t in cols if TASKS.get(t) is not None and TASKS[t].group == "unseen"]
    header = ["method", "k"] + [DISPLAY.get(t, t) for t in cols] + (["Avg"] if len(cols) > 1 else [])
    lines = [
        f"# {title}",
        "",
        "Cells: EM (answer recall@k), in percent; FEVER: label accuracy (how a label is decided: each run's "
        "metrics.json `decoding`). Closed-book reads no passages.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---:|" + "|".join("---:" for _ in header[2:]) + "|",
    ]
    partial = False
    for r in rows:
        cells = [r.label, ",".join(str(k) for k in r.ks)]
        cells += [_cell(r.cells[t].em, r.cells[t].recall) if t in r.cells else "-" for t in cols]
        if len(cols) > 1:
            em, rec, full = average(r, cols)
            partial |= not full
            cells.append(_cell(em, rec) + ("" if full else "*"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Examples per cell: {_examples(rows, cols)}."
        + (f" Seen formats: {', '.join(seen)}." if seen else "")
        + (f" Unseen formats: {', '.join(unseen)}." if unseen else ""),
        "EM: KILT exact match after the official KILT normalisation ([unicode EM]: accents and Unicode "
        "punctuation also folded). Answer recall@k: a normalised gold answer (accents and Unicode punctuation "
        "folded) occurs on word boundaries inside one of the k passages used (AIDA: the gold page title is a passage title; FEVER: a "
        "passage is a gold provenance page); oracle rows use the gold passages themselves.",
    ]
    if partial:
        lines.append("*: average over the tasks this row has.")
    lines.append("Runs: " + "; ".join(f"{r.label} <- {', '.join(r.sources)}" for r in rows))
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: str | Path, title: str = "ImpRAG evaluation") -> None:
    """Grouped bars: EM (top) and answer recall@k (bottom) per task, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = columns(rows)
    names = [DISPLAY.get(t, t) for t in cols]
    with_avg = len(cols) > 1
    if with_avg:
        names.append("Avg")
    x = np.arange(len(names))
    width = 0.8 / max(1, len(rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * len(names) + 2.5), 7.0), sharex=True)
    colours = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    ks = sorted({c.k for r in rows for c in r.cells.values()})
    recall_name = f"answer recall@{ks[0]}" if len(ks) == 1 else "answer recall@k"
    for panel, (ax, what) in enumerate(zip(axes, ("EM", recall_name))):
        for i, r in enumerate(rows):
            vals = []
            for t in cols:
                c = r.cells.get(t)
                v = None if c is None else (c.em if panel == 0 else c.recall)
                vals.append(v)
            if with_avg:
                em, rec, _ = average(r, cols)
                vals.append(em if panel == 0 else rec)
            heights = [0.0 if v is None else 100 * v for v in vals]
            pos = x - 0.4 + width * (i + 0.5)
            bars = ax.bar(pos, heights, width, label=r.label, color=colours[i % len(colours)])
            for j, (b, v) in enumerate(zip(bars, vals)):
                has_task = j == len(cols) or cols[j] in r.cells  # the Avg bar, or a task this row ran
                if v is not None or has_task:
                    ax.annotate(
                        "n/a" if v is None else f"{100 * v:.0f}",
                        (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 1),
                        textcoords="offset points",
                    )
        ax.set_ylabel(f"{what} (%)")
        ax.set_ylim(0, 110)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_title(title)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(names)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    title: str = "ImpRAG evaluation",
    skipped: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write out/table.md, out/chart.png and out/report.json; return the report document.

    `skipped`: task -> why it was not evaluated, named under the table and kept in report.json."""
    from imprag.io import atomic_write_json, atomic_write_text

    rows = collect(run_dirs)
    out = Path(out)
    table = format_table(rows, title)
    if skipped:
        table += (
            "Not evaluated: "
            + "; ".join(f"{DISPLAY.get(t, t)} ({why})" for t, why in skipped.items())
            + ".\n"
        )
    atomic_write_text(out / "table.md", table)
    plot(rows, out / "chart.png", title)
    doc = {
        "columns": columns(rows),
        "rows": [
            {
                "label": r.label,
                "method": r.method,
                "sources": r.sources,
                "cells": {
                    t: {"em": c.em, "answer_recall": c.recall, "k": c.k, "n": c.n} for t, c in r.cells.items()
                },
            }
            for r in rows
        ],
    }
    if skipped:
        doc["skipped"] = dict(skipped)
    atomic_write_json(out / "report.json", doc)
    return doc
