"""`Index`: a built index folder loaded for search (FAISS + passage store + metadata).

from imprag import ImpRAG, Index
m = ImpRAG.from_pretrained("ckpt")
index = Index.load("wiki-index", model=m)        # refuses an index built by other weights
rows, scores = index.search(m.embed_queries(["Q: who wrote Hamlet? A:"]), k=10)
index.passages(rows[0])                         # [{"id", "title", "text", ...}, ...]
index.retrieve(m, ["Q: who wrote Hamlet? A:"], k=10)   # the same, with "score" and "row"
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imprag.errors import UserError
from imprag.index.build import INDEX_FILE, METADATA_FILE, OFFSETS_FILE
from imprag.index.faiss_build import apply_search_params
from imprag.index.shards import SHARD_DIR, Shard
from imprag.index.store import PassageStore
from imprag.io import read_json

log = logging.getLogger(__name__)


def _as_queries(q: Any, dim: int) -> np.ndarray:
    """numpy array or torch tensor (B, dim) or (dim,) -> C-contiguous float32 (B, dim)."""
    if hasattr(q, "detach"):  # torch.Tensor, without importing torch here
        q = q.detach().to("cpu").float().numpy()
    arr = np.ascontiguousarray(np.asarray(q, dtype=np.float32))
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise UserError(
            f"query vectors have shape {tuple(arr.shape)}, but the index holds {dim}-d vectors (B, {dim} expected)"
        )
    return arr


class Index:
    """A searchable index folder. Rows are 0..N-1 in passages-file order (skipped lines excluded)."""

    def __init__(
        self,
        directory: Path,
        metadata: dict[str, Any],
        faiss_index: Any,
        store: PassageStore,
        allow_mismatch: bool = False,
    ):
        self.dir = Path(directory)
        self.metadata = metadata
        self.faiss = faiss_index
        self.store = store
        self.allow_mismatch = allow_mismatch
        self._checked_models: weakref.WeakSet[Any] = weakref.WeakSet()  # models whose fingerprint matched

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        directory: str | Path,
        model: Any = None,
        allow_mismatch: bool = False,
        passages: str | Path | None = None,
        nprobe: int | None = None,
        mmap: bool = False,
    ) -> Index:
        """Open `directory` (made by `imprag index`).

        model: an ImpRAG whose fingerprint must equal the index's (UserError otherwise, unless
        `allow_mismatch`). passages: where the passages file is now, if it moved. nprobe: override the
        stored IVF nprobe. mmap: memory-map the FAISS file instead of reading it (large IVF indexes).
        """
        from imprag.index.faiss_build import import_faiss

        faiss = import_faiss()
        d = Path(directory)
        meta_path = d / METADATA_FILE
        if not meta_path.exists():
            hint = (
                " (the build is unfinished: run the same `imprag index` command again to resume)"
                if (d / "build.json").exists()
                else ""
            )
            raise UserError(f"{d}: not an index folder, {METADATA_FILE} missing{hint}")
        meta = read_json(meta_path)
        for name in (INDEX_FILE, OFFSETS_FILE):
            if not (d / name).exists():
                raise UserError(f"{d / name}: missing; re-run `imprag index --merge-only --out {d}`")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        fi = faiss.read_index(str(d / INDEX_FILE), flags)
        if fi.d != meta["dim"] or fi.ntotal != meta["count"]:
            raise UserError(
                f"{d / INDEX_FILE}: holds {fi.ntotal} x {fi.d} vectors but metadata says {meta['count']} x {meta['dim']}; re-run `imprag index --merge-only --out {d}`"
            )
        params = dict(meta.get("search_params") or {})
        if nprobe is not None:
            params["nprobe"] = nprobe
        apply_search_params(fi, params)
        store = PassageStore(
            cls._passages_path(d, meta, passages), d / OFFSETS_FILE, expected_size=meta["passages"]["size"]
        )
        index = cls(d, meta, fi, store, allow_mismatch)
        if model is not None:
            index.install_calibration(model)
            index.check_model(model)
        return index

    @staticmethod
    def _passages_path(d: Path, meta: dict[str, Any], override: str | Path | None) -> Path:
        if override is not None:
            return Path(override)
        p = Path(meta["passages"]["path"])
        if p.exists():
            return p
        rel = (d / meta["passages"].get("path_relative", "")).resolve()
        return rel if rel.is_file() else p  # a missing file is reported on first access

    def install_calibration(self, model: Any) -> None:
        """A model that needs retrieval calibration means and has none takes the ones this index was built
        with (`imprag index` calibrates a plain backbone from its corpus and stores them here)."""
        from imprag.model.calibration import Calibration

        needs = getattr(getattr(model, "config", None), "calibration", "none") != "none"
        if needs and hasattr(model, "calibration") and model.calibration is None:
            model.calibration = Calibration.load(self.dir)

    def check_model(self, model: Any) -> None:
        """Refuse a model whose passage vectors are not the ones this index holds."""
        dim = int(getattr(model, "dim", self.dim))
        if dim != self.dim:
            raise UserError(
                f"{self.dir}: index vectors are {self.dim}-d but the model's are {dim}-d; re-index with this model (`imprag index --model ...`)"
            )
        fp = model.fingerprint()
        if fp != self.fingerprint:
            msg = (
                f"{self.dir}: index was built by a model with fingerprint {self.fingerprint[:12]}, "
                f"this model's is {fp[:12]} (other weights, b or state); re-index with "
                "`imprag index --model <this model> ...`, or pass --allow-fingerprint-mismatch "
                "(allow_mismatch=True) to search it anyway"
            )
            if not self.allow_mismatch:
                raise UserError(msg)
            log.warning("%s", msg.split("; re-index")[0] + " (allowed)")
        self._checked_models.add(model)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.metadata["dim"])

    @property
    def fingerprint(self) -> str:
        return str(self.metadata["fingerprint"])

    def __len__(self) -> int:
        return int(self.metadata["count"])

    def __repr__(self) -> str:
        m = self.metadata
        return f"Index({str(self.dir)!r}, count={m['count']}, dim={m['dim']}, factory={m['factory_effective']!r})"

    # -- search -------------------------------------------------------------------------------------
    def search(
        self, query_vectors: Any, k: int = 10, rerank: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, dim) numpy or torch -> (rows (B, k) int64, scores (B, k) float32), best first.

        Rows are index rows (`passages(rows)` gives the records); -1 with score -inf pads results
        when the index returns fewer than k (k > N, or an IVF probing too few lists).
        rerank=R (> k): fetch R candidates from FAISS, rescore them exactly with the stored vectors
        and keep the best k (recovers most of what PQ compression loses).
        """
        if k < 1:
            raise UserError(f"-k must be >= 1, got {k}")
        q = _as_queries(query_vectors, self.dim)
        fetch = max(k, rerank or 0)
        scores, rows = self.faiss.search(q, fetch)
        rows = rows.astype(np.int64)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        if fetch > k:
            for i in range(len(q)):
                valid = rows[i] >= 0
                exact = self.vectors(rows[i][valid]) @ q[i]  # (n_valid,) float32
                scores[i, valid] = exact
                order = np.argsort(-scores[i], kind="stable")
                rows[i], scores[i] = rows[i][order], scores[i][order]
            rows, scores = rows[:, :k], scores[:, :k]
        return rows, scores

    def passages(self, rows: Iterable[int] | np.ndarray) -> list[dict[str, Any]]:
        """Index rows -> passage records ({"id", "title", "text", ...}); rows < 0 are dropped."""
        arr = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64).ravel()
        return self.store.get_many(int(r) for r in arr if r >= 0)

    def retrieve(
        self, model: Any, prompts: Sequence[str], k: int = 10, batch_size: int = 32, rerank: int | None = None
    ) -> list[list[dict[str, Any]]]:
        """The model's implicit query for each prompt -> its top-k passages with "score" and "row"."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if model not in self._checked_models:
            self.check_model(model)
        q = model.embed_queries(list(prompts), batch_size=batch_size)
        rows, scores = self.search(q, k, rerank=rerank)
        results = []
        for r_row, s_row in zip(rows, scores):
            hits = []
            for r, s in zip(r_row, s_row):
                if r < 0:
                    continue
                rec = dict(self.store.get(int(r)))
                rec["score"] = float(s)
                rec["row"] = int(r)
                hits.append(rec)
            results.append(hits)
        return results

    # -- vectors ------------------------------------------------------------------------------------
    def vectors(self, rows: Iterable[int] | np.ndarray | None = None) -> np.ndarray:
        """The stored passage vectors as float32: all (N, dim), or the given rows (len(rows), dim)."""
        shards = [
            Shard(self.dir / SHARD_DIR, s["chunk"], {"rows": s["rows"]}) for s in self.metadata["shards"]
        ]
        starts = np.array([s["first_row"] for s in self.metadata["shards"]] + [len(self)], dtype=np.int64)
        if rows is None:
            parts = [np.asarray(s.vectors(), dtype=np.float32) for s in shards if s.rows]
            return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)
        r = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64).ravel()
        if r.size and (r.min() < 0 or r.max() >= len(self)):
            raise IndexError(f"rows out of range [0, {len(self)})")
        out = np.empty((r.size, self.dim), np.float32)
        which = np.searchsorted(starts, r, side="right") - 1  # shard of each row
        for i in np.unique(which):
            sel = which == i
            out[sel] = shards[i].vectors()[r[sel] - starts[i]]
        return out
