"""`imprag index` as a library: stream passages -> embed in shards (resumable, splittable) -> merge.

The pipeline only needs an `Encoder` (a function texts -> (B, dim) float32 vectors plus the fingerprint of
what produced them), so it is the same for the ImpRAG model (bottom layers only) and for anything else.

    out/build.json          what is being built (passages sha256, fingerprint, chunk size, dtype...)
    out/shards/chunk-*.{vectors.npy,offsets.npy,json}   one finished chunk each (see shards.py)
    out/offsets.npy         (N, 2) int64 byte range of every index row in the passages file
    out/index.faiss         FAISS index (inner product), row i = i-th valid passage in file order
    out/metadata.json       written last: its presence means the index is complete

Every file is written atomically and a chunk's manifest is its commit point, so a process killed at any
moment (kill -9 included) and started again with the same command redoes at most the chunk it was on
and ends with the same index. Chunk boundaries are fixed line ranges, so P processes (torchrun or
`--shard i/P`, chunk c belongs to rank c % P) embed exactly the batches one process would.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from imprag.errors import UserError
from imprag.index.corpus import Chunk, CorpusInfo, find_repeated_id, iter_chunks, num_chunks, scan_corpus
from imprag.index.faiss_build import atomic_write_index, build_faiss, plan_factory
from imprag.index.shards import SHARD_DIR, Shard, load_shard, write_shard
from imprag.io import atomic_write_bytes, atomic_write_json, read_json
from imprag.passage import passage_text, repeated_id_error

log = logging.getLogger(__name__)

BUILD_FILE = "build.json"
METADATA_FILE = "metadata.json"
OFFSETS_FILE = "offsets.npy"
INDEX_FILE = "index.faiss"
FORMAT = 1
_DTYPES = ("float16", "float32")


@dataclass
class Encoder:
    """What turns passage texts into vectors: `embed(texts) -> (B, dim) float32`.

    `fingerprint` identifies the weights + settings behind the vectors (an index is only valid for it);
    `info` is recorded in metadata.json (b, state, model path...); `files` are written into the index
    folder when the build starts (the model's retrieval calibration, which queries need too).
    """

    embed: Callable[[list[str]], np.ndarray]
    dim: int
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class IndexBuildConfig:
    """Every `imprag index` flag; `rank`/`world_size` come from --shard i/P or torchrun's env."""

    out: Path
    passages: Path | None = None
    factory: str = "Flat"
    batch_size: int = 32
    max_length: int | None = None  # recorded in the build key; the encoder applies it
    dtype: str = "float16"  # stored vectors; FAISS always receives float32
    on_error: str = "fail"
    chunk_size: int = 8192
    rank: int = 0
    world_size: int = 1
    merge: bool = True  # this process merges once every chunk is finished (rank 0 only)
    wait: bool = False  # rank 0 polls until the other ranks' chunks appear (torchrun)
    train_size: int | None = None  # IVF/PQ training sample; default: enough for every codebook
    nprobe: int | None = None  # default IVF nprobe stored in metadata
    poll_seconds: float = 5.0
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.passages is not None:
            self.passages = Path(self.passages)
        if self.dtype not in _DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.on_error not in ("fail", "skip"):
            raise UserError(f"--on-error must be fail or skip, got {self.on_error!r}")
        for name in ("batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 1:
            raise UserError(f"--max-length must be >= 1, got {self.max_length}")
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise UserError(f"--shard {self.rank}/{self.world_size}: need 0 <= i < P")


# -- build.json: what is being built -----------------------------------------------------------------


def _build_key(record: dict[str, Any]) -> str:
    keyed = {
        k: record[k]
        for k in (
            "format",
            "passages_sha256",
            "passages_size",
            "fingerprint",
            "dim",
            "chunk_size",
            "max_length",
            "dtype",
        )
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def _corpus_info(passages: Path, previous: dict[str, Any] | None, show_progress: bool) -> CorpusInfo:
    """Hash the passages file, unless build.json already holds the hash of this very file (same size+mtime)."""
    p = passages.resolve()
    if not p.is_file():
        raise UserError(f"{passages}: passages file not found (check --passages)")
    if previous is not None:
        prev = CorpusInfo.from_json(previous["passages"])
        st = p.stat()
        if prev.path == str(p) and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
            return prev
    log.info("hashing %s (%.1f MB)", p, p.stat().st_size / 1e6)
    return scan_corpus(p, show_progress=show_progress)


def prepare_build(cfg: IndexBuildConfig, encoder: Encoder) -> dict[str, Any]:
    """Create out/build.json, or check that the one there describes this same build (resume)."""
    if cfg.passages is None:
        raise UserError("--passages is required to embed (only --merge-only works without it)")
    path = cfg.out / BUILD_FILE
    previous = read_json(path) if path.exists() else None
    corpus = _corpus_info(cfg.passages, previous, cfg.show_progress)
    if previous is None:  # a resumed build checked its file when it started
        repeated = find_repeated_id(cfg.passages, cfg.show_progress)
        if repeated is not None:
            pid, line, first = repeated
            raise UserError(
                f"{cfg.passages}:{line}: {repeated_id_error(pid, first)} "
                "(retrieval results and recall are by id): fix the file, then run the command again"
            )
    record: dict[str, Any] = {
        "format": FORMAT,
        "passages": corpus.to_json(),
        "passages_sha256": corpus.sha256,
        "passages_size": corpus.size,
        "fingerprint": encoder.fingerprint,
        "dim": int(encoder.dim),
        "chunk_size": cfg.chunk_size,
        "max_length": cfg.max_length,
        "dtype": cfg.dtype,
        "encoder": encoder.info,
    }
    record["key"] = _build_key(record)
    if previous is not None and previous.get("key") != record["key"]:
        diffs = [
            f"{k} {previous.get(k)!r} -> {record[k]!r}"
            for k in ("passages_sha256", "fingerprint", "dim", "chunk_size", "max_length", "dtype")
            if previous.get(k) != record[k]
        ]
        raise UserError(
            f"{cfg.out}: holds a different build ({'; '.join(diffs) or 'format changed'}); "
            f"use another --out, or delete {cfg.out} to start over"
        )
    if previous != record:
        cfg.out.mkdir(parents=True, exist_ok=True)  # only now: a refused build leaves no folder behind
        atomic_write_json(path, record)  # first start, or the same file seen at a new path/mtime
    for name, data in encoder.files.items():
        if not (cfg.out / name).exists():
            atomic_write_bytes(cfg.out / name, data)
    return record


def read_build(out: Path) -> dict[str, Any]:
    path = Path(out) / BUILD_FILE
    if not path.exists():
        raise UserError(
            f"{out}: no index build here ({BUILD_FILE} missing); run `imprag index --model ... --passages ... --out {out}` first"
        )
    return read_json(path)


# -- embedding ---------------------------------------------------------------------------------------


@dataclass
class EmbedReport:
    chunks_total: int
    chunks_mine: int
    chunks_done_before: int  # finished by an earlier (interrupted) run
    chunks_embedded: int
    passages_embedded: int
    lines_skipped: int
    seconds: float

    @property
    def passages_per_second(self) -> float:
        return self.passages_embedded / self.seconds if self.seconds > 0 else 0.0


def _embed_chunk(chunk: Chunk, encoder: Encoder, batch_size: int, dtype: str, bar: tqdm) -> np.ndarray:
    """(n, dim) vectors in file order; batches are formed longest-first so padding stays low."""
    texts = [p.text for p in chunk.passages]
    n = len(texts)
    out = np.empty((n, encoder.dim), dtype=dtype)
    # Longest first (stable for ties): similar lengths share a batch, and an out-of-memory shows at once.
    order = sorted(range(n), key=lambda i: -len(texts[i]))
    for s in range(0, n, batch_size):
        idx = order[s : s + batch_size]
        v = np.asarray(encoder.embed([texts[i] for i in idx]), dtype=np.float32)
        if v.shape != (len(idx), encoder.dim):
            raise RuntimeError(f"encoder returned shape {v.shape}, expected {(len(idx), encoder.dim)}")
        with np.errstate(over="ignore"):  # reported below, with the line and the fix
            cast = v.astype(dtype)
        bad = ~np.isfinite(cast).all(axis=1)
        if bad.any():
            line = chunk.passages[idx[int(np.argmax(bad))]].line
            hint = " (float16 overflow: use --dtype float32)" if np.isfinite(v).all() else ""
            raise UserError(f"line {line}: the passage's vector is not finite{hint}")
        out[idx] = cast
        bar.update(len(idx))
    return out


def embed_shards(cfg: IndexBuildConfig, encoder: Encoder, build: dict[str, Any]) -> EmbedReport:
    """Embed every unfinished chunk owned by this rank (chunk c belongs to rank c % P)."""
    shard_dir = cfg.out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    key = build["key"]
    corpus = CorpusInfo.from_json(build["passages"])
    n_chunks = num_chunks(corpus.lines, cfg.chunk_size)
    mine = [c for c in range(n_chunks) if c % cfg.world_size == cfg.rank]
    done = {c for c in mine if (s := load_shard(shard_dir, c, key)) is not None and _usable(s)}
    todo = set(mine) - done

    def chunk_lines(c: int) -> int:
        return min(cfg.chunk_size, corpus.lines - c * cfg.chunk_size)

    if done:
        log.info("resuming: %d of this process's %d chunks are already finished", len(done), len(mine))
    desc = "embedding" if cfg.world_size == 1 else f"embedding [{cfg.rank}/{cfg.world_size}]"
    t0 = time.perf_counter()
    embedded = passages = skipped = 0
    with tqdm(
        total=sum(chunk_lines(c) for c in mine),
        initial=sum(chunk_lines(c) for c in done),
        unit="passage",
        smoothing=0.05,
        desc=desc,
        disable=not cfg.show_progress,
        position=cfg.rank if cfg.world_size > 1 else None,
    ) as bar:
        if todo:
            for chunk in iter_chunks(
                cfg.passages or corpus.path, cfg.chunk_size, todo.__contains__, passage_text, cfg.on_error
            ):
                tc = time.perf_counter()
                vectors = _embed_chunk(chunk, encoder, cfg.batch_size, cfg.dtype, bar)
                offsets = np.array([[p.start, p.end] for p in chunk.passages], dtype=np.int64).reshape(-1, 2)
                write_shard(
                    shard_dir,
                    chunk.index,
                    vectors,
                    offsets,
                    {
                        "build_key": key,
                        "first_line": chunk.first_line,
                        "last_line": chunk.last_line,
                        "byte_start": chunk.byte_start,
                        "byte_end": chunk.byte_end,
                        "skipped": chunk.skipped,
                        "seconds": round(time.perf_counter() - tc, 3),
                        "rank": cfg.rank,
                        "world_size": cfg.world_size,
                    },
                )
                bar.update(chunk_lines(chunk.index) - len(chunk.passages))  # blank and skipped lines
                embedded += 1
                passages += len(chunk.passages)
                skipped += len(chunk.skipped)
    seconds = time.perf_counter() - t0
    report = EmbedReport(n_chunks, len(mine), len(done), embedded, passages, skipped, seconds)
    if embedded:
        log.info(
            "embedded %d passages in %d chunks in %.1f s (%.1f passages/s)",
            passages,
            embedded,
            seconds,
            report.passages_per_second,
        )
    return report


def _usable(shard: Shard) -> bool:
    try:
        shard.verify(full=False)
        return True
    except UserError as e:
        log.warning("redoing chunk %d: %s", shard.chunk, e)
        return False


def missing_chunks(out: Path, build: dict[str, Any]) -> list[int]:
    shard_dir = Path(out) / SHARD_DIR
    n = num_chunks(int(build["passages"]["lines"]), int(build["chunk_size"]))
    return [c for c in range(n) if load_shard(shard_dir, c, build["key"]) is None]


def wait_for_shards(
    out: Path, build: dict[str, Any], poll_seconds: float = 5.0, timeout: float | None = None
) -> None:
    """Block until every chunk has a finished shard (rank 0 of a torchrun job)."""
    t0 = time.monotonic()
    last_log: float | None = None
    while missing := missing_chunks(out, build):
        now = time.monotonic()
        if timeout is not None and now - t0 > timeout:
            raise UserError(f"{out}: gave up waiting for {len(missing)} chunks from the other processes")
        if last_log is None or now - last_log > 60:
            log.info("waiting for %d chunks from the other processes", len(missing))
            last_log = now
        time.sleep(poll_seconds)


# -- merge -------------------------------------------------------------------------------------------


def _fmt_chunks(chunks: list[int]) -> str:
    head = ", ".join(map(str, chunks[:10]))
    return head + (f", ... ({len(chunks)} in all)" if len(chunks) > 10 else "")


def merge(
    out: Path,
    factory: str = "Flat",
    train_size: int | None = None,
    nprobe: int | None = None,
    passages: Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """All finished shards -> offsets.npy + index.faiss + metadata.json (the same for any process split)."""
    out = Path(out)
    t0 = time.perf_counter()
    build = read_build(out)
    shards = _finished_shards(out, build)
    corpus = CorpusInfo.from_json(build["passages"])
    passages_path = _check_passages(passages, corpus)

    existing = out / METADATA_FILE
    if existing.exists():
        old = read_json(existing)
        if (
            old.get("build_key") == build["key"]
            and old.get("factory") == factory
            and old.get("train_size_requested") == train_size
            and old.get("nprobe_requested") == nprobe
            and old.get("passages", {}).get("path") == str(passages_path)
            and (out / INDEX_FILE).exists()
            and (out / OFFSETS_FILE).exists()
        ):
            log.info("index in %s is already complete", out)
            return old
        existing.unlink()  # a half-rebuilt folder must never look complete

    for s in tqdm(shards, desc="checking shards", unit="shard", disable=not show_progress, leave=False):
        s.verify(full=True)
    counts = np.array([s.rows for s in shards], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])  # shard i holds rows [starts[i], starts[i+1])
    n, dim = int(starts[-1]), int(build["dim"])

    plan = plan_factory(factory, n, dim, train_size, nprobe)
    for note in plan.notes:
        log.info("note: %s", note)

    def gather(rows: np.ndarray) -> np.ndarray:
        parts = []
        for i, s in enumerate(shards):
            lo, hi = np.searchsorted(rows, [starts[i], starts[i + 1]])
            if hi > lo:
                parts.append(np.asarray(s.vectors()[rows[lo:hi] - starts[i]], dtype=np.float32))
        return np.concatenate(parts) if parts else np.empty((0, dim), np.float32)

    def blocks(block: int = 65536) -> Iterator[np.ndarray]:
        for s in shards:
            v = s.vectors()
            for b in range(0, s.rows, block):
                yield np.asarray(v[b : b + block], dtype=np.float32)

    index = build_faiss(plan, dim, n, gather, blocks, show_progress)

    _write_offsets(out / OFFSETS_FILE, shards, starts)
    atomic_write_index(index, out / INDEX_FILE)

    skipped = [dict(row) for s in shards for row in s.manifest.get("skipped", [])]
    enc = build.get("encoder", {})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "count": n,
        "dim": dim,
        "metric": "inner_product",
        "factory": factory,
        "factory_effective": plan.effective,
        "factory_notes": plan.notes,
        "search_params": plan.search_params,
        "train_size": plan.train_size,
        "train_size_requested": train_size,
        "nprobe_requested": nprobe,
        "vectors_dtype": build["dtype"],
        "passages": {
            "path": str(passages_path),
            "path_relative": os.path.relpath(passages_path, out.resolve()),
            "size": corpus.size,
            "sha256": corpus.sha256,
            "lines": corpus.lines,
        },
        "b": enc.get("b"),
        "state": enc.get("state"),
        "model": enc.get("model"),
        "fingerprint": build["fingerprint"],
        "max_length": build["max_length"],
        "chunk_size": build["chunk_size"],
        "shards": [
            {"chunk": s.chunk, "rows": s.rows, "first_row": int(starts[i])} for i, s in enumerate(shards)
        ],
        "skipped": {"count": len(skipped), "lines": skipped[:1000]},
        "build_key": build["key"],
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "embed_seconds": round(sum(float(s.manifest.get("seconds", 0.0)) for s in shards), 3),
        "merge_seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(out / METADATA_FILE, meta)
    log.info("index complete: %d passages, dim %d, %s -> %s", n, dim, plan.effective, out)
    return meta


def _finished_shards(out: Path, build: dict[str, Any]) -> list[Shard]:
    """Every chunk's shard, in order; UserError naming the chunks not embedded yet."""
    n_chunks = num_chunks(int(build["passages"]["lines"]), int(build["chunk_size"]))
    loaded = [load_shard(out / SHARD_DIR, c, build["key"]) for c in range(n_chunks)]
    missing = [c for c, s in enumerate(loaded) if s is None]
    if missing:
        raise UserError(
            f"{out}: {len(missing)} of {n_chunks} chunks are not embedded yet (chunk {_fmt_chunks(missing)}); "
            "run the embedding command(s) again to finish them, then merge"
        )
    return [s for s in loaded if s is not None]


def _write_offsets(path: Path, shards: list[Shard], starts: np.ndarray) -> None:
    """(n, 2) int64 byte offsets of every row, streamed into a temp memmap then renamed: never the whole
    array twice in memory, never a half-written file at `path`."""
    tmp = path.with_name(f".{path.name}.tmp.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(int(starts[-1]), 2))
    for i, s in enumerate(shards):
        arr[starts[i] : starts[i + 1]] = s.offsets()
    arr.flush()
    del arr
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_passages(passages: Path | None, corpus: CorpusInfo) -> Path:
    """The passages file the index will read rows from: the one embedded, or a copy of it at a new path."""
    if passages is None:
        return Path(corpus.path)
    p = Path(passages).resolve()
    if not p.is_file():
        raise UserError(f"{passages}: passages file not found (check --passages)")
    st = p.stat()
    if st.st_size != corpus.size or (
        st.st_mtime_ns != corpus.mtime_ns and scan_corpus(p, False).sha256 != corpus.sha256
    ):
        raise UserError(
            f"{passages}: not the file these shards were embedded from ({corpus.path}); pass that file or re-index"
        )
    return p


# -- everything --------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    embed: EmbedReport
    metadata: dict[str, Any] | None  # None when another process merges


def build_index(cfg: IndexBuildConfig, encoder: Encoder) -> BuildResult:
    """Embed this rank's chunks, then (rank 0, when merging) wait for the rest and build the index."""
    build = prepare_build(cfg, encoder)
    report = embed_shards(cfg, encoder, build)
    if not cfg.merge or cfg.rank != 0:
        return BuildResult(report, None)
    if cfg.wait:
        wait_for_shards(cfg.out, build, cfg.poll_seconds)
    meta = merge(cfg.out, cfg.factory, cfg.train_size, cfg.nprobe, cfg.passages, cfg.show_progress)
    return BuildResult(report, meta)
