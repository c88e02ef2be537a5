"""Read task files (KILT JSONL or plain question/answers JSONL) into Examples; write KILT predictions.

KILT line: {"id", "input", "output": [{"answer": ...}, {"provenance": [...]}, ...], "meta"?}
  - answers are collected from every output entry that has one (several entries, several answers);
  - provenance entries carry KILT's `wikipedia_id`/`title` or this corpus's `passage_id`.
Plain line: {"question" | "input", "answers": [...] | "answer": "...", "id"?, "provenance"?}, or a
  JSON object holding the template's fields (e.g. {"context", "question", "answers"} for rc).
The format is detected per line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from imprag.data.example import Example, Provenance
from imprag.data.tasks import TaskSpec, apply_template, get_task
from imprag.errors import UserError
from imprag.io import atomic_write_jsonl, iter_jsonl

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")


class _BadLine(ValueError):
    """A structural problem in one line (reported as file:line: message)."""


def _answer_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _BadLine(f"an answer must be a string, got {type(value).__name__}")
    return str(value)


def _provenance(items: Any) -> list[Provenance]:
    if items is None:
        return []
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise _BadLine("`provenance` must be a list of objects")
    out = []
    for p in items:
        if not isinstance(p, Mapping):
            raise _BadLine("each provenance entry must be a JSON object")
        pid, wid, title = p.get("passage_id"), p.get("wikipedia_id"), p.get("title")
        out.append(
            Provenance(
                passage_id=None if pid is None else str(pid),
                wikipedia_id=None if wid is None else str(wid),
                title=None if title is None else str(title),
            )
        )
    return out


def _dedupe(seq: Iterable[Any]) -> list[Any]:
    seen: set = set()
    out = []
    for x in seq:
        key = (x.passage_id, x.wikipedia_id, x.title) if isinstance(x, Provenance) else x
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def _is_kilt(obj: Mapping[str, Any]) -> bool:
    """KILT lines have `output`, or `input` with no `answers` (test files), or only an `id` (TriviaQA)."""
    if "output" in obj:
        return True
    if "answers" in obj or "answer" in obj or "question" in obj:
        return False
    return "input" in obj or set(obj) <= {"id", "meta"}


def parse_record(
    obj: Mapping[str, Any], spec: TaskSpec
) -> tuple[str | None, Any, list[str], list[Provenance]]:
    """One JSON object -> (id or None, raw input: str or field mapping, answers as in the file, provenance)."""
    rid = obj.get("id")
    rid = None if rid is None else str(rid)
    answers: list[str] = []
    prov: list[Provenance] = []
    if _is_kilt(obj):
        raw: Any = obj.get("input", "")
        output = obj.get("output", [])
        if isinstance(output, Mapping):
            output = [output]
        if not isinstance(output, list):
            raise _BadLine('`output` must be a list of {"answer"} / {"provenance"} objects')
        for entry in output:
            if not isinstance(entry, Mapping):
                raise _BadLine("each `output` entry must be a JSON object")
            if entry.get("answer") is not None:
                answers.append(_answer_str(entry["answer"]))
            prov.extend(_provenance(entry.get("provenance")))
    else:
        fields = spec.fields
        if "question" in obj:
            raw = obj["question"]
        elif "input" in obj:
            raw = obj["input"]
        elif all(f in obj for f in fields):
            raw = {f: obj[f] for f in fields}
        else:
            raise _BadLine(f"no input: expected `input` or `question` (or the fields {', '.join(fields)})")
        if len(fields) > 1 and isinstance(raw, str) and all(f in obj for f in fields):
            raw = {f: obj[f] for f in fields}  # e.g. rc: {"context", "question", "answers"}
        ans = obj.get("answers", obj.get("answer"))
        if ans is not None:
            answers = [_answer_str(a) for a in (ans if isinstance(ans, list) else [ans])]
        prov = _provenance(obj.get("provenance"))
    if not isinstance(raw, str | Mapping):
        raise _BadLine(f"the input must be a string, got {type(raw).__name__}")
    return rid, raw, answers, prov


def load_examples(
    path: str | Path,
    task: str | TaskSpec,
    on_error: str = "fail",
    require_answers: bool = False,
    limit: int | None = None,
    *,
    max_context_words: int | None = None,
    max_context_chars: int | None = None,
    unique_ids: bool = False,
) -> list[Example]:
    """Read a KILT or plain JSONL task file into Examples with the task's prompt applied.

    on_error="fail" raises UserError naming file:line for a bad line; "skip" logs and skips it.
    require_answers=True refuses examples without gold answers (e.g. KILT test_without_answers files).
    FEVER answers become True/False; entity-linking answers include the gold provenance page titles.
    A repeated id is logged, or with unique_ids=True refused (UserError naming both lines).
    """
    if on_error not in ON_ERROR:
        raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    spec = get_task(task)
    path = Path(path)
    examples: list[Example] = []
    seen_ids: dict[str, int] = {}
    no_input = 0
    for lineno, obj in iter_jsonl(path, on_error=on_error):
        if limit is not None and len(examples) >= limit:
            break
        where = f"{path}:{lineno}"
        try:
            rid, raw, answers, prov = parse_record(obj, spec)
            if spec.kind == "aida":  # gold answers are page titles
                answers += [p.title for p in prov if p.title]
            answers = _dedupe(spec.to_model_answer(a) for a in answers if a.strip())
            prompt = apply_template(spec, raw, max_context_words, max_context_chars)
        except (_BadLine, UserError) as e:
            if on_error == "fail":
                raise UserError(f"{where}: {e} (fix the line, or pass --on-error skip)") from None
            log.warning("skipping %s: %s", where, e)
            continue
        rid = rid if rid is not None else f"{path.stem}-{lineno}"
        if require_answers and not answers:
            raise UserError(
                f"{where}: example {rid} has no gold answers (a test file without answers?); "
                "use a file with an `output` answer (or `answers`) on every line"
            )
        if isinstance(raw, str) and not raw.strip():
            no_input += 1
        if rid in seen_ids:
            if unique_ids:
                raise UserError(
                    f"{where}: duplicate id {rid!r} (first at line {seen_ids[rid]}); ids must be unique"
                )
            log.warning("%s: duplicate id %s", where, rid)
        seen_ids.setdefault(rid, lineno)
        text = raw if isinstance(raw, str) else "\n".join(str(raw[f]) for f in spec.fields)
        examples.append(
            Example(
                id=rid,
                task=spec.name,
                input=text,
                prompt=prompt,
                answers=answers,
                provenance=_dedupe(prov),
                source=where,
            )
        )
    if no_input:
        log.warning(
            "%s: %d examples have no input text%s",
            path,
            no_input,
            " (KILT's TriviaQA files carry ids only: fill `input` from the TriviaQA questions)"
            if spec.name == "triviaqa"
            else "",
        )
    log.info("%s: %d %s examples", path, len(examples), spec.name)
    return examples


def _prov_dict(p: Any) -> dict[str, Any]:
    """Provenance / passage record / mapping -> {"passage_id", "title", "wikipedia_id"?, "score"?}."""
    if is_dataclass(p) and not isinstance(p, type):
        p = asdict(p)
    if not isinstance(p, Mapping):
        raise TypeError(f"provenance must be a mapping or Provenance, got {type(p).__name__}")
    pid = p.get("passage_id", p.get("id"))
    out: dict[str, Any] = {"passage_id": None if pid is None else str(pid), "title": p.get("title")}
    if p.get("wikipedia_id") is not None:
        out["wikipedia_id"] = str(p["wikipedia_id"])
    if p.get("score") is not None:
        out["score"] = float(p["score"])
    return out


def prediction_record(row: Mapping[str, Any], task: str | TaskSpec | None = None) -> dict[str, Any]:
    """{"id", "input"?, "answer", "provenance"?: [...], "meta"?} -> one KILT prediction line."""
    if "id" not in row:
        raise ValueError("a prediction row needs an `id`")
    answer = str(row.get("answer", "") or "")
    if task is not None:
        answer = get_task(task).to_kilt_answer(answer)
    out: dict[str, Any] = {"id": str(row["id"])}
    if row.get("input") is not None:
        out["input"] = row["input"]
    out["output"] = [{"answer": answer, "provenance": [_prov_dict(p) for p in row.get("provenance") or []]}]
    if row.get("meta"):
        out["meta"] = row["meta"]
    return out


def write_predictions(
    path: str | Path, rows: Iterable[Mapping[str, Any]], task: str | TaskSpec | None = None
) -> None:
    """Write KILT-format predictions atomically:
    {"id", "input", "output": [{"answer", "provenance": [{"passage_id", "title", "wikipedia_id"?}]}]}.

    Rows: {"id", "input"?, "answer", "provenance"?: Provenance objects, passage records ({"id","title",
    "text"}) or provenance dicts, "meta"?}. With `task`, answers go back to KILT labels (True -> SUPPORTS)
    so the file also scores with KILT's own evaluator.
    """
    atomic_write_jsonl(path, [prediction_record(r, task) for r in rows])
