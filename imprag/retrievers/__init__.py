"""Separate, explicit-query retrievers (BM25, all-MiniLM-L6-v2): pseudo labels for the warmup stage and
the retriever of the RA-IT baseline. ImpRAG's own retrieval lives in imprag.model / imprag.index."""

from __future__ import annotations

from pathlib import Path

from imprag.errors import UserError
from imprag.retrievers.base import Retriever, default_cache_dir

RETRIEVERS = ("bm25", "dense")

__all__ = ["RETRIEVERS", "Retriever", "default_cache_dir", "load_retriever"]


def load_retriever(
    name: str,
    passages_path: str | Path,
    cache_dir: str | Path | None = None,
    on_error: str = "fail",
) -> Retriever:
    """The named retriever over a passages JSONL, from the cache when this file was indexed before."""
    if name == "bm25":
        from imprag.retrievers.bm25 import BM25Retriever

        return BM25Retriever.from_passages(passages_path, cache_dir=cache_dir, on_error=on_error)
    if name == "dense":
        from imprag.retrievers.dense import DenseRetriever

        return DenseRetriever.from_passages(passages_path, cache_dir=cache_dir, on_error=on_error)
    raise UserError(f"unknown retriever {name!r}; choose one of: {', '.join(RETRIEVERS)}")
