"""Pseudo-label mining: each example's whole prompt (task template applied) is the query of a separate
retriever (BM25 or all-MiniLM-L6-v2); its ranked top-k passage ids are the example's candidates.

The warmup stage takes ranks 1-5 as positives and samples hard negatives from ranks 10-50; the
self-distillation stage scores every candidate; RA-IT reads the top k. One row per example:
{"id", "task", "prompt", "answers", "gold_passage_ids", "candidates": [ids, best first], "scores": [...]}.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from imprag.data.example import Example
from imprag.errors import UserError
from imprag.retrievers import RETRIEVERS, Retriever, load_retriever

log = logging.getLogger(__name__)


def gold_passage_ids(ex: Example) -> list[str]:
    """This corpus's passage ids named by the example's provenance (KILT wikipedia_id-only entries
    cannot be matched to passages and are left out)."""
    out: list[str] = []
    for p in ex.provenance:
        if p.passage_id is not None and p.passage_id not in out:
            out.append(p.passage_id)
    return out


def gold_recall(rows: Sequence[dict], k: int | None = None) -> tuple[int, int]:
    """(examples with a gold passage among their top-k candidates, examples that name a gold passage)."""
    hits = total = 0
    for r in rows:
        gold = set(r.get("gold_passage_ids") or [])
        if not gold:
            continue
        total += 1
        cands = r["candidates"] if k is None else r["candidates"][:k]
        hits += any(c in gold for c in cands)
    return hits, total


def mine(
    examples: Sequence[Example],
    passages_path: str | Path,
    retriever: str | Retriever = "bm25",
    top_k: int = 50,
    cache_dir: str | Path | None = None,
    on_error: str = "fail",
    batch_size: int = 256,
) -> list[dict]:
    """Rank the passages of `passages_path` for every example's prompt; one row per example, in order.

    `retriever` is "bm25", "dense", or an already loaded Retriever (whose corpus must be this file).
    The retriever's index is cached under `cache_dir` (default ~/.cache/imprag), built on first use.
    """
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {top_k})")
    if isinstance(retriever, str):
        if retriever not in RETRIEVERS:
            raise UserError(f"unknown retriever {retriever!r}; choose one of: {', '.join(RETRIEVERS)}")
        ret = load_retriever(retriever, passages_path, cache_dir=cache_dir, on_error=on_error)
    else:
        ret = retriever
    rows: list[dict] = []
    with tqdm(total=len(examples), desc=f"mine ({ret.name})", unit="ex", disable=len(examples) < 1000) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            ids, scores = ret.search([ex.prompt for ex in batch], top_k)  # B lists of k ids, (B, k)
            for ex, cand, sc in zip(batch, ids, scores):
                rows.append(
                    {
                        "id": ex.id,
                        "task": ex.task,
                        "prompt": ex.prompt,
                        "answers": list(ex.answers),
                        "gold_passage_ids": gold_passage_ids(ex),
                        "candidates": list(cand),
                        "scores": [round(float(s), 6) for s in sc],
                    }
                )
            bar.update(len(batch))
    hits, total = gold_recall(rows)
    if total:
        log.info(
            "gold passage among the top-%d %s candidates for %d of %d examples with a gold passage (%.1f%%)",
            min(top_k, len(ret.ids)),
            ret.name,
            hits,
            total,
            100.0 * hits / total,
        )
    else:
        log.info("no example names a gold passage_id of this corpus: gold recall not measured")
    return rows
