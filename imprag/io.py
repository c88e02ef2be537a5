"""Atomic file writes and line-numbered JSONL reading shared by every command."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imprag.errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; written files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def iter_jsonl(path: str | Path, on_error: str = "fail") -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line; 1-based line numbers.

    on_error="fail" raises UserError naming the file and line; "skip" logs a warning and goes on.
    """
    import logging

    log = logging.getLogger(__name__)
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError("expected a JSON object")
            except (UnicodeDecodeError, ValueError) as e:
                msg = f"{path}:{lineno}: {_short(e)}"
                if on_error == "fail":
                    raise UserError(msg + " (fix the line, or pass --on-error skip)") from None
                log.warning("skipping %s", msg)
                continue
            yield lineno, obj


def _short(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "not valid UTF-8"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at column {e.colno})"
    return str(e)
