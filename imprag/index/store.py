"""Passage store: index row -> the passage record, read from the original JSONL by byte offset.

The corpus text is never loaded: `offsets.npy` holds one `[start, end)` byte range per index row
(shape (N, 2), int64, memory-mapped on first use), and a row's record is one `pread` of its line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from imprag.errors import UserError


class PassageStore:
    """Lazily opened view of a passages JSONL through an offsets array; safe to share across threads."""

    def __init__(self, passages_path: str | Path, offsets_path: str | Path, expected_size: int | None = None):
        self.passages_path = Path(passages_path)
        self.offsets_path = Path(offsets_path)
        self.expected_size = expected_size
        self._offsets: np.ndarray | None = None  # (N, 2) int64, memory-mapped
        self._fd: int | None = None
        self._lock = threading.Lock()

    # -- lazy opening -------------------------------------------------------------------------------
    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            if not self.offsets_path.exists():
                raise UserError(
                    f"{self.offsets_path}: file not found (the index folder is incomplete; re-run `imprag index`)"
                )
            arr = np.load(self.offsets_path, mmap_mode="r")
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise UserError(
                    f"{self.offsets_path}: expected an (N, 2) array of byte ranges, got shape {arr.shape}"
                )
            self._offsets = arr
        return self._offsets

    def _open(self) -> int:
        with self._lock:
            if self._fd is None:
                if not self.passages_path.exists():
                    raise UserError(
                        f"{self.passages_path}: passages file not found (it was moved?); "
                        "pass its new location with `passages=` / --passages"
                    )
                size = self.passages_path.stat().st_size
                if self.expected_size is not None and size != self.expected_size:
                    raise UserError(
                        f"{self.passages_path}: file is {size} bytes but the index was built from {self.expected_size} "
                        "bytes; the passages changed since indexing, re-run `imprag index`"
                    )
                self._fd = os.open(self.passages_path, os.O_RDONLY)
            return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._offsets = None

    def __del__(self) -> None:  # best effort; the fd is also closed at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    # -- access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def raw_line(self, row: int) -> bytes:
        n = len(self)
        if not 0 <= row < n:
            raise IndexError(f"passage row {row} out of range [0, {n})")
        start, end = (int(x) for x in self.offsets[row])
        fd = self._open()
        data = os.pread(fd, end - start, start)
        if len(data) != end - start:
            raise UserError(
                f"{self.passages_path}: truncated at byte {start}; the file changed since indexing, re-run `imprag index`"
            )
        return data

    def get(self, row: int) -> dict[str, Any]:
        """The full record of index row `row` ({"id", "title", "text", ...extra fields})."""
        raw = self.raw_line(row)
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec = None
        if not isinstance(rec, dict):
            start = int(self.offsets[row][0])
            raise UserError(
                f"{self.passages_path}: byte {start} (index row {row}) is not the JSON line it was when indexed; "
                "the file changed since indexing, re-run `imprag index`"
            )
        return rec

    def get_many(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        return [self.get(int(r)) for r in rows]
