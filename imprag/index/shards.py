"""Shard files: one chunk's vectors and byte offsets, each written atomically, plus a small manifest.

Layout under `<out>/shards/`:
    chunk-000012.vectors.npy   (n, dim) float16|float32, rows in file order
    chunk-000012.offsets.npy   (n, 2) int64 [start, end) byte range of each row's line
    chunk-000012.json          manifest, written last: its presence means the chunk is finished
A process killed at any moment leaves at worst a temp file or npy files without a manifest; both are
ignored and rewritten on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imprag.errors import UserError
from imprag.io import atomic_write_json

SHARD_DIR = "shards"


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    """np.save through a temp file in the same folder + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Shard:
    """A finished chunk as recorded by its manifest."""

    dir: Path
    chunk: int
    manifest: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def vectors_path(self) -> Path:
        return self.dir / f"chunk-{self.chunk:06d}.vectors.npy"

    @property
    def offsets_path(self) -> Path:
        return self.dir / f"chunk-{self.chunk:06d}.offsets.npy"

    def vectors(self) -> np.ndarray:
        """(rows, dim) memory-mapped, in the stored dtype."""
        return np.load(self.vectors_path, mmap_mode="r")

    def offsets(self) -> np.ndarray:
        """(rows, 2) int64 memory-mapped."""
        return np.load(self.offsets_path, mmap_mode="r")

    def verify(self, full: bool = False) -> None:
        """Shape/dtype against the manifest; with `full`, the sha256 of both files too."""
        for path, key in ((self.vectors_path, "vectors_sha256"), (self.offsets_path, "offsets_sha256")):
            if not path.exists():
                raise UserError(
                    f"{path}: missing although its manifest exists; delete {self.manifest_path} and re-run"
                )
            if full and file_sha256(path) != self.manifest[key]:
                raise UserError(
                    f"{path}: contents do not match its manifest (corrupted?); delete {self.manifest_path} and re-run"
                )
        v = self.vectors()
        if v.shape != (self.rows, self.manifest["dim"]) or str(v.dtype) != self.manifest["dtype"]:
            raise UserError(
                f"{self.vectors_path}: shape {v.shape} {v.dtype} disagrees with its manifest; delete {self.manifest_path} and re-run"
            )

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.dir, self.chunk)


def manifest_path(shard_dir: Path, chunk: int) -> Path:
    return shard_dir / f"chunk-{chunk:06d}.json"


def write_shard(
    shard_dir: Path, chunk: int, vectors: np.ndarray, offsets: np.ndarray, manifest: dict[str, Any]
) -> Shard:
    """Vectors, then offsets, then the manifest (the commit point), each atomically."""
    s = Shard(shard_dir, chunk, {})
    atomic_save_npy(s.vectors_path, vectors)
    atomic_save_npy(s.offsets_path, offsets)
    manifest = dict(manifest)
    manifest.update(
        chunk=chunk,
        rows=int(vectors.shape[0]),
        dim=int(vectors.shape[1]),
        dtype=str(vectors.dtype),
        vectors_sha256=file_sha256(s.vectors_path),
        offsets_sha256=file_sha256(s.offsets_path),
    )
    atomic_write_json(manifest_path(shard_dir, chunk), manifest)
    s.manifest = manifest
    return s


def load_shard(shard_dir: Path, chunk: int, build_key: str) -> Shard | None:
    """The finished shard of `chunk`, or None when it is absent or belongs to another build."""
    p = manifest_path(shard_dir, chunk)
    if not p.exists():
        return None
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # cannot happen with atomic writes; treat as unfinished
    if manifest.get("build_key") != build_key:
        return None
    return Shard(shard_dir, chunk, manifest)
