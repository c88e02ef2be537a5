"""What every explicit-query retriever (BM25, dense) shares: the search interface and the on-disk cache
that makes each corpus be indexed once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from imprag.errors import UserError
from imprag.io import atomic_write_json

# Bump when what a cache folder holds changes meaning (tokenisation, text form, file layout).
CACHE_VERSION = 1


@runtime_checkable
class Retriever(Protocol):
    """A retriever over a fixed passage corpus that takes explicit text queries."""

    name: str
    ids: list[str]  # passage ids in corpus order; search results refer to these

    def search(self, queries: list[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k passage ids per query, best first, and their scores (B, min(k, len(ids)))."""
        ...


def default_cache_dir() -> Path:
    """`$IMPRAG_CACHE`, else `$XDG_CACHE_HOME/imprag`, else `~/.cache/imprag`."""
    if os.environ.get("IMPRAG_CACHE"):
        return Path(os.environ["IMPRAG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imprag"


def corpus_key(path: str | Path, extra: str = "") -> str:
    """Cache key of a passages file: its absolute path, size and mtime (no full read of a big corpus)
    plus `extra` (retriever settings), hashed."""
    p = Path(path).resolve()
    if not p.exists():
        raise UserError(f"{path}: file not found")
    st = p.stat()
    raw = f"v{CACHE_VERSION}|{p}|{st.st_size}|{st.st_mtime_ns}|{extra}"
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()[:16]


def corpus_meta(path: str | Path, **extra: object) -> dict:
    p = Path(path).resolve()
    st = p.stat()
    return {
        "version": CACHE_VERSION,
        "passages": str(p),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        **extra,
    }


@contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temp folder beside `final`; on success it is renamed to `final` in one step, so a
    cache folder that exists is always complete. On failure the temp folder is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a cache is as readable as a normal folder
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same cache first: theirs is as good as ours.
            if not (final / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_ids(folder: Path, ids: list[str], meta: dict) -> None:
    """ids.json then meta.json (meta last: its presence marks a finished folder)."""
    atomic_write_json(folder / "ids.json", ids)
    atomic_write_json(folder / "meta.json", meta)


def read_ids(folder: Path) -> list[str] | None:
    """The ids of a finished cache folder, or None when the folder is absent or incomplete."""
    if not (folder / "meta.json").exists() or not (folder / "ids.json").exists():
        return None
    try:
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return [str(i) for i in ids] if isinstance(ids, list) else None


def check_k(k: int, n: int) -> int:
    """k clipped to the corpus size (a 50-candidate request on a 20-passage corpus returns 20)."""
    if k < 1:
        raise UserError(f"top-k must be at least 1 (got {k})")
    return min(int(k), n)


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top k of scores (B, N) -> (indices (B, k), scores (B, k)), best first; equal scores are
    ordered by corpus position, so rankings are deterministic."""
    n = scores.shape[1]
    if k < n:
        # argpartition keeps anything that could be in the top k; ties at the boundary are resolved
        # by including every index whose score equals the k-th best.
        kth = np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (B, 1) negated k-th best
        out_i = np.empty((scores.shape[0], k), dtype=np.int64)
        for r in range(scores.shape[0]):
            cand = np.nonzero(-scores[r] <= kth[r, 0])[0]  # ascending corpus order
            order = np.argsort(-scores[r, cand], kind="stable")[:k]
            out_i[r] = cand[order]
    else:
        out_i = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return out_i, np.take_along_axis(scores, out_i, axis=1)
