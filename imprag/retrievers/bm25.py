"""BM25 over a passages JSONL with `bm25s` (English stopwords, "Title: text" as the document); built
once per corpus and cached as a bm25s folder."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from imprag.passage import read_passages
from imprag.retrievers.base import (
    building_dir,
    check_k,
    corpus_key,
    corpus_meta,
    default_cache_dir,
    read_ids,
    topk_rows,
    write_ids,
)

log = logging.getLogger(__name__)


@dataclass
class BM25Config:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"

    def key(self) -> str:
        return f"bm25|{self.k1}|{self.b}|{self.method}|{self.stopwords}"


def _bm25s():
    # bm25s imports jax when it is installed and runs a top-k at import: that initialises every visible GPU
    # and preallocates 75% of its memory. On an H100 a second `imprag demo` beside the first ran out of CUDA
    # memory for it. imprag uses bm25s's numpy backend only, so jax stays on the CPU unless the user says.
    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s

    # bm25s forces its logger to DEBUG at import, which would print internals under any root config.
    lg = logging.getLogger("bm25s")
    if lg.level == logging.DEBUG:
        lg.setLevel(logging.INFO)
    return bm25s


def _tokenize(texts: list[str], stopwords: str, show_progress: bool) -> list[list[str]]:
    bm25s = _bm25s()

    # bm25s's own tokeniser (lower-case, \w\w+ tokens, stopwords removed) for corpus and queries alike.
    out = bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=show_progress)
    return [list(t) for t in out]  # type: ignore[union-attr]


class BM25Retriever:
    """`search(queries, k) -> (ids, scores)` with bm25s; ties are broken by corpus order."""

    name = "bm25"

    def __init__(self, bm25, ids: list[str], config: BM25Config) -> None:
        self._bm25 = bm25
        self.ids = ids
        self.config = config

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, ids: list[str], texts: list[str], config: BM25Config | None = None) -> BM25Retriever:
        """Index passage texts in memory (no cache)."""
        bm25s = _bm25s()

        config = config or BM25Config()
        bm25 = bm25s.BM25(k1=config.k1, b=config.b, method=config.method, backend="numpy")
        show = len(texts) >= 10_000
        # Corpus tokens as (ids, vocab): far smaller than lists of strings for a big corpus.
        corpus_tokens = bm25s.tokenize(texts, stopwords=config.stopwords, show_progress=show)
        bm25.index(corpus_tokens, show_progress=show)
        return cls(bm25, list(ids), config)

    @classmethod
    def from_passages(
        cls,
        passages_path: str | Path,
        cache_dir: str | Path | None = None,
        config: BM25Config | None = None,
        on_error: str = "fail",
    ) -> BM25Retriever:
        """Load the cached index of `passages_path`, building (and caching) it the first time.

        The cache folder is `<cache_dir>/bm25-<key>`, key = hash of the file's path, size, mtime and
        the BM25 settings; a changed file gets a fresh index.
        """
        config = config or BM25Config()
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder = root / "retrievers" / f"bm25-{corpus_key(passages_path, config.key())}"
        loaded = cls.load(folder, config)
        if loaded is not None:
            log.info("BM25 index of %s loaded from %s (%d passages)", passages_path, folder, len(loaded))
            return loaded
        ids, texts = read_passages(passages_path, on_error=on_error)
        log.info("building BM25 index of %s (%d passages) in %s", passages_path, len(ids), folder)
        ret = cls.build(ids, texts, config)
        ret.save(folder, corpus_meta(passages_path, retriever="bm25", settings=config.key(), n=len(ids)))
        return ret

    def save(self, folder: str | Path, meta: dict | None = None) -> None:
        """Write the bm25s arrays, ids.json and meta.json; the folder appears only once complete."""
        with building_dir(Path(folder)) as tmp:
            self._bm25.save(str(tmp), show_progress=False)
            write_ids(
                tmp,
                self.ids,
                meta or {"retriever": "bm25", "settings": self.config.key(), "n": len(self.ids)},
            )

    @classmethod
    def load(cls, folder: str | Path, config: BM25Config | None = None) -> BM25Retriever | None:
        """A saved index, or None when `folder` holds no finished one."""
        bm25s = _bm25s()

        folder = Path(folder)
        ids = read_ids(folder)
        if ids is None:
            return None
        bm25 = bm25s.BM25.load(str(folder), show_progress=False, backend="numpy")
        return cls(bm25, ids, config or BM25Config())

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for one query (N,). A query with no indexed term scores 0 everywhere."""
        tokens = _tokenize([query], self.config.stopwords, False)[0]
        # "" is bm25s's placeholder for empty documents: a query must not match those.
        tokens = [t for t in tokens if t and t in self._bm25.vocab_dict]
        if not tokens:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def search(self, queries: list[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k passage ids per query, best first, and their scores (B, min(k, N))."""
        k = check_k(k, len(self.ids))
        out_ids: list[list[str]] = []
        out_scores = np.zeros((len(queries), k), dtype=np.float32)
        # One query at a time: a (B, N) score matrix would not fit for a Wikipedia-sized N.
        for r, q in enumerate(tqdm(queries, desc="bm25 search", unit="q", disable=len(queries) < 1000)):
            idx, sc = topk_rows(self.scores(q)[None, :], k)  # (1, k), (1, k)
            out_ids.append([self.ids[i] for i in idx[0]])
            out_scores[r] = sc[0]
        return out_ids, out_scores
