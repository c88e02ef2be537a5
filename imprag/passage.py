"""A passage record: the one rule for a valid passages-JSONL line, the one reader of such a file, and the
text the model reads and indexes. Index, train, retrievers and eval all read passages through here."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imprag.errors import UserError

log = logging.getLogger(__name__)

FORMAT_HINT = 'expected JSONL lines like {"id", "title", "text"}'


def passage_text(p: Mapping[str, Any]) -> str:
    """`{"title", "text"}` -> "Title: text" (title omitted when empty)."""
    title = (p.get("title") or "").strip()
    text = (p.get("text") or "").strip()
    return f"{title}: {text}" if title else text


def validate_record(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a usable passage line, (None, what is wrong) otherwise. Ids must also be unique
    within a file: `read_passage_lines` checks that (and the index build, for corpora of any size)."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte {e.start} of the line)"
    try:
        rec = json.loads(s)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(rec, dict):
        return None, f'expected a JSON object with "id" and "text", got {type(rec).__name__}'
    if "text" not in rec or rec["text"] is None:
        return None, 'missing "text"'
    if not isinstance(rec["text"], str):
        return None, f'"text" must be a string, got {type(rec["text"]).__name__}'
    if not rec["text"].strip():
        return None, 'empty "text"'
    pid = rec.get("id")
    if pid is None or (isinstance(pid, str) and not pid.strip()):
        return None, 'missing "id"'
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        return None, f'"id" must be a string or integer, got {type(pid).__name__}'
    title = rec.get("title")
    if title is not None and not isinstance(title, str):
        return None, f'"title" must be a string, got {type(title).__name__}'
    return rec, None


def repeated_id_error(pid: str, first_line: int) -> str:
    return f"passage id {pid!r} repeats line {first_line}; ids must be unique"


@dataclass(frozen=True)
class PassageLine:
    """One valid passage of a file: its 1-based line, its bytes [start, end) and its record."""

    line: int
    start: int
    end: int
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["id"])


def read_passage_lines(
    path: str | Path, on_error: str = "fail", flag: str = "--passages", skip_flag: str = "--on-error skip"
) -> Iterator[PassageLine]:
    """Every valid passage of a passages JSONL, in file order. A bad line (see `validate_record`, or an id
    an earlier line has) raises UserError naming the file and line (`on_error="fail"`), or is logged and
    left out (`"skip"`: the first line of a repeated id is kept). Blank lines are neither."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: passages file not found (check {flag})")
    first_line: dict[str, int] = {}
    end = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, end = end, end + len(raw)
            if not raw.strip():
                continue
            rec, err = validate_record(raw)
            if rec is not None:
                pid = str(rec["id"])
                if pid in first_line:
                    err = repeated_id_error(pid, first_line[pid])
                else:
                    first_line[pid] = lineno
            if err is not None:
                msg = f"{path}:{lineno}: {err}"
                if on_error == "fail":
                    raise UserError(f"{msg} (fix the line, or pass {skip_flag})")
                log.warning("skipping %s", msg)
                continue
            assert rec is not None
            yield PassageLine(lineno, start, end, rec)
    if not first_line:
        raise UserError(f"{path}: no passages found ({FORMAT_HINT})")


def read_passages(
    path: str | Path, on_error: str = "fail", flag: str = "--passages", skip_flag: str = "--on-error skip"
) -> tuple[list[str], list[str]]:
    """A passages JSONL -> (ids, texts as `passage_text` renders them), in file order."""
    ids: list[str] = []
    texts: list[str] = []
    for p in read_passage_lines(path, on_error, flag, skip_flag):
        ids.append(p.id)
        texts.append(passage_text(p.record))
    return ids, texts
