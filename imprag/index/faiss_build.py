"""Building a FAISS index (inner product) from a factory string over vectors that live on disk.

Small corpora get sensible clamps instead of FAISS errors or warnings: an IVF needs about 39 training
points per list and a k-bit PQ about 39 * 2**k, so `IVFn` and `PQm[xk]` are reduced to what the training
sample supports, with a logged note. The training sample is drawn with a fixed seed, so two builds over
the same vectors produce byte-identical indexes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imprag.errors import UserError

log = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39  # FAISS's own threshold for "please provide at least ... training points"
_IVF = re.compile(r"IVF(\d+)")
_PQ = re.compile(r"(?<![A-Za-z])PQ(\d+)(?:x(\d+))?(fs)?")


@dataclass
class FactoryPlan:
    """The factory string actually built, its training sample size and default search parameters."""

    requested: str
    effective: str
    train_size: int  # 0 when the index needs no training
    search_params: dict[str, int] = field(default_factory=dict)  # FAISS ParameterSpace names
    notes: list[str] = field(default_factory=list)


def import_faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines list CPU-feature probes
    import faiss

    return faiss


def plan_factory(
    factory: str, n: int, dim: int, train_size: int | None = None, nprobe: int | None = None
) -> FactoryPlan:
    """Clamp IVF lists / PQ bits for `n` vectors of size `dim`; choose the training sample and nprobe."""
    factory = factory.strip()
    if not factory:
        raise UserError("--factory is empty; use e.g. Flat, HNSW32 or IVF4096,PQ64")
    if n <= 0:
        raise UserError("no passages to index (every line was blank or skipped)")
    notes: list[str] = []
    ivf = _IVF.search(factory)
    pq = _PQ.search(factory)
    nlist = int(ivf.group(1)) if ivf else 0
    needs_training = bool(
        ivf or pq or "SQ" in factory or "OPQ" in factory or "LSH" in factory or "RQ" in factory
    )
    if pq:
        m = int(pq.group(1))
        if dim % m:
            divisors = [d for d in (8, 16, 32, 48, 64, 96, 128, 256) if dim % d == 0]
            raise UserError(
                f"--factory {factory}: PQ{m} needs the vector size ({dim}) divisible by {m}; try PQ{divisors[-1] if divisors else 1}"
            )
    # Training sample: enough for every codebook, never more than the corpus.
    want = (
        max(MIN_POINTS_PER_CENTROID * nlist, MIN_POINTS_PER_CENTROID * 256 if pq else 0, 20_000)
        if needs_training
        else 0
    )
    n_train = min(n, train_size or want) if needs_training else 0
    effective = factory
    if ivf:
        cap = max(1, n_train // MIN_POINTS_PER_CENTROID)
        if nlist > cap:
            effective = effective[: ivf.start(1)] + str(cap) + effective[ivf.end(1) :]
            notes.append(
                f"IVF{nlist} needs {MIN_POINTS_PER_CENTROID * nlist} training vectors but {n_train} are available: using IVF{cap}"
            )
            nlist = cap
    pq = _PQ.search(effective)
    if pq and not pq.group(3):
        nbits = int(pq.group(2) or 8)
        cap_bits = max(1, int(math.floor(math.log2(max(2, n_train // MIN_POINTS_PER_CENTROID)))))
        if nbits > cap_bits:
            repl = f"PQ{pq.group(1)}x{cap_bits}"
            effective = effective[: pq.start()] + repl + effective[pq.end() :]
            notes.append(
                f"PQ{pq.group(1)}x{nbits} needs {MIN_POINTS_PER_CENTROID << nbits} training vectors but {n_train} are available: using {repl}"
            )
    params: dict[str, int] = {}
    if ivf:
        params["nprobe"] = min(nlist, nprobe if nprobe else max(16, int(math.sqrt(nlist))))
    if "HNSW" in effective:
        params["quantizer_efSearch" if ivf else "efSearch"] = 128
    return FactoryPlan(factory, effective, n_train, params, notes)


def make_index(plan: FactoryPlan, dim: int):
    faiss = import_faiss()
    try:
        index = faiss.index_factory(dim, plan.effective, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise UserError(
            f"--factory {plan.requested}: FAISS cannot build it ({first}); see the FAISS index_factory docs"
        ) from None
    # FAISS's factory turns on polysemous training for PQ codes; it only serves polysemous search
    # (never used here) and triples PQ training time.
    inner = faiss.downcast_index(index)
    while inner is not None:
        if hasattr(inner, "do_polysemous_training"):
            inner.do_polysemous_training = False
        nxt = getattr(inner, "index", None) or getattr(inner, "base_index", None)
        inner = faiss.downcast_index(nxt) if nxt is not None else None
    return index


def apply_search_params(index, params: dict[str, Any]) -> None:
    """Set nprobe / efSearch on whatever wraps them; parameters an index lacks are ignored."""
    faiss = import_faiss()
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError:
            log.debug("index has no parameter %s", name)


def sample_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    """`k` distinct sorted rows out of `n` (all rows when k >= n); deterministic."""
    if k >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def build_faiss(
    plan: FactoryPlan,
    dim: int,
    n: int,
    gather: Callable[[np.ndarray], np.ndarray],
    blocks: Callable[[], Iterator[np.ndarray]],
    show_progress: bool = True,
):
    """Train on `gather(sample_rows)` (k, dim) float32, then add `blocks()` (each (b, dim)) in row order."""
    from tqdm import tqdm

    index = make_index(plan, dim)
    if not index.is_trained:
        rows = sample_rows(n, plan.train_size)
        log.info("training %s on %d of %d vectors", plan.effective, len(rows), n)
        index.train(np.ascontiguousarray(gather(rows), dtype=np.float32))
    with tqdm(
        total=n, unit="vec", desc=f"adding to {plan.effective}", disable=not show_progress, leave=False
    ) as bar:
        for block in blocks():
            index.add(np.ascontiguousarray(block, dtype=np.float32))
            bar.update(len(block))
    if index.ntotal != n:
        raise RuntimeError(f"FAISS index holds {index.ntotal} vectors, expected {n}")
    apply_search_params(index, plan.search_params)
    return index


def atomic_write_index(index, path: Path) -> None:
    faiss = import_faiss()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
