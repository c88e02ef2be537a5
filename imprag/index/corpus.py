"""Streaming a passages JSONL in fixed line-number chunks, with byte offsets and line-numbered errors.

Chunk c holds physical lines `c*N+1 .. (c+1)*N` (1-based), so chunk boundaries depend only on the file
and `--chunk-size`, never on the number of processes: any split of the chunks over ranks (and any resume)
embeds exactly the same batches, and concatenating the chunks in order gives the same rows.
Only the chunks a process owns are decoded; the others are skipped line by line without parsing.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from imprag.errors import UserError
from imprag.passage import validate_record

log = logging.getLogger(__name__)

_HASH_BLOCK = 16 << 20  # 16 MiB reads for hashing / line counting


@dataclass(frozen=True)
class CorpusInfo:
    """Identity of a passages file: what metadata.json records and what a resume must match."""

    path: str  # absolute
    size: int
    mtime_ns: int
    sha256: str
    lines: int  # physical lines, as `for line in open(path, "rb")` counts them

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "sha256": self.sha256,
            "lines": self.lines,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> CorpusInfo:
        return CorpusInfo(d["path"], int(d["size"]), int(d["mtime_ns"]), d["sha256"], int(d["lines"]))


def _bytes_bar(total: int, desc: str, show_progress: bool) -> tqdm:
    """A transient progress bar over a file's bytes."""
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not show_progress, leave=False)


def scan_corpus(path: str | Path, show_progress: bool = True) -> CorpusInfo:
    """One sequential pass: sha256 and line count (no JSON parsing, constant memory)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"{path}: passages file not found (check --passages)")
    st = path.stat()
    h = hashlib.sha256()
    newlines = 0
    last = b""
    with path.open("rb") as f, _bytes_bar(st.st_size, "hashing passages", show_progress) as bar:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                break
            h.update(block)
            newlines += block.count(b"\n")
            last = block[-1:]
            bar.update(len(block))
    lines = newlines + (1 if st.st_size and last != b"\n" else 0)
    return CorpusInfo(str(path), st.st_size, st.st_mtime_ns, h.hexdigest(), lines)


def num_chunks(lines: int, chunk_size: int) -> int:
    return (lines + chunk_size - 1) // chunk_size


@dataclass
class Passage:
    """One valid passage of a chunk: its line, its byte range in the file and the text to embed."""

    line: int  # 1-based
    start: int  # byte offset of the line
    end: int  # byte offset just past the line's last byte (newline included)
    text: str  # passage_text(record)


@dataclass
class Chunk:
    index: int
    first_line: int
    last_line: int  # inclusive; may be < first_line + N - 1 for the last chunk
    byte_start: int
    byte_end: int
    passages: list[Passage] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"line", "error"}


def find_repeated_id(path: str | Path, show_progress: bool = True) -> tuple[str, int, int] | None:
    """(id, line, first line) of the first passage whose id an earlier passage has, or None.

    Ids are held as 64-bit hashes (8 bytes a passage, twice while sorting: ~340 MB for 21M passages,
    where a set of the strings would take GBs). Only when two hashes match does a second pass find the
    lines. Lines that are not valid passages are left to the embedding pass, which reports or skips them.
    """
    hashes = array("Q", (_id_hash(pid) for _, pid in _passage_ids(path, show_progress)))
    h = np.sort(np.frombuffer(hashes, dtype=np.uint64))
    repeated = set(h[1:][h[1:] == h[:-1]].tolist())
    del h, hashes
    first_line: dict[str, int] = {}
    for line, pid in _passage_ids(path, show_progress) if repeated else ():
        if _id_hash(pid) in repeated:
            if pid in first_line:
                return pid, line, first_line[pid]
            first_line[pid] = line
    return None  # no repeat, or only a 64-bit hash collision


def _passage_ids(path: str | Path, show_progress: bool) -> Iterator[tuple[int, str]]:
    """(line, id as a string) of every valid passage line, in file order."""
    path = Path(path)
    with path.open("rb") as f, _bytes_bar(path.stat().st_size, "checking passage ids", show_progress) as bar:
        for lineno, raw in enumerate(f, start=1):
            bar.update(len(raw))
            rec, _ = validate_record(raw) if raw.strip() else (None, "blank")
            if rec is not None:
                yield lineno, str(rec["id"])


def _id_hash(pid: str) -> int:
    return int.from_bytes(hashlib.blake2b(pid.encode(), digest_size=8).digest(), "little")


def iter_chunks(
    path: str | Path,
    chunk_size: int,
    wanted: Callable[[int], bool],
    to_text: Callable[[dict[str, Any]], str],
    on_error: str = "fail",
) -> Iterator[Chunk]:
    """Yield the chunks for which `wanted(chunk_index)` is true, decoded and validated, in file order.

    Blank lines are neither passages nor errors. A bad line raises UserError (`on_error="fail"`) or is
    logged and recorded in `Chunk.skipped` (`"skip"`).
    """
    if on_error not in ("fail", "skip"):
        raise UserError(f"--on-error must be fail or skip, got {on_error!r}")
    path = Path(path)
    offset = 0
    chunk: Chunk | None = None
    warned = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            c = (lineno - 1) // chunk_size
            if (lineno - 1) % chunk_size == 0:  # first line of chunk c
                if chunk is not None:
                    chunk.byte_end = offset
                    yield chunk
                chunk = Chunk(c, lineno, lineno, offset, offset) if wanted(c) else None
            start, offset = offset, offset + len(raw)
            if chunk is None:
                continue
            chunk.last_line = lineno
            if not raw.strip():
                continue
            rec, err = validate_record(raw)
            if err is not None:
                msg = f"{path}:{lineno}: {err}"
                if on_error == "fail":
                    raise UserError(msg + " (fix the line, or pass --on-error skip to leave it out)")
                if warned < 100:
                    log.warning("skipping %s", msg)
                elif warned == 100:
                    log.warning("more lines skipped; every skipped line is listed in the shard manifests")
                warned += 1
                chunk.skipped.append({"line": lineno, "error": err})
                continue
            assert rec is not None
            chunk.passages.append(Passage(lineno, start, offset, to_text(rec)))
        if chunk is not None:
            chunk.byte_end = offset
            yield chunk
