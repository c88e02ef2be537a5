"""Scoring a KILT-format prediction file against a gold task file (the library behind `imprag score`).

Answers: EM and token F1 (FEVER: label accuracy), by default with the official KILT/SQuAD normalisation.
Retrieval, when the predictions carry provenance: R-precision and provenance recall@k against gold
provenance (passage_id, else page level), and answer recall@k when the passages' text is known (in the
provenance, or looked up in a passages file).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imprag.config_io import option
from imprag.data.kilt import load_examples
from imprag.data.tasks import TASKS, get_task, task_for_file
from imprag.errors import UserError
from imprag.eval.metrics import MATCH_MODES, NORMALIZATIONS, aggregate, score_example
from imprag.io import iter_jsonl
from imprag.passage import read_passage_lines

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ScoringOptions:
    """How answers are matched: the options `imprag eval` and `imprag score` share."""

    match: Literal[MATCH_MODES] = option(  # type: ignore[valid-type]
        "word", "answer-recall matching (default: word boundaries; accents and Unicode punctuation folded)"
    )
    normalize: Literal[NORMALIZATIONS] = option(  # type: ignore[valid-type]
        "kilt",
        "EM/F1 answer normalisation: kilt = the official KILT/SQuAD rule (default); unicode = also "
        "fold accents and Unicode punctuation (not comparable with published numbers)",
    )


def _prediction(obj: Mapping[str, Any], where: str) -> tuple[str, str, list[dict]]:
    """One prediction line -> (id, answer, provenance in rank order)."""
    if obj.get("id") is None:
        raise UserError(f"{where}: prediction has no `id`; every line needs the id of its gold example")
    answer = None
    prov: list[dict] = []
    output = obj.get("output", [])
    if isinstance(output, Mapping):
        output = [output]
    if not isinstance(output, list) or not all(isinstance(e, Mapping) for e in output):
        raise UserError(f'{where}: `output` must be a list of {{"answer", "provenance"}} objects')
    for entry in output:
        if answer is None and entry.get("answer") is not None:
            answer = entry["answer"]
        p = entry.get("provenance") or []
        if not isinstance(p, list) or not all(isinstance(x, Mapping) for x in p):
            raise UserError(f"{where}: `provenance` must be a list of objects")
        prov.extend(dict(x) for x in p)
    if answer is None:
        answer = obj.get("answer", obj.get("prediction", ""))
    if not isinstance(answer, str | int | float) or isinstance(answer, bool):
        raise UserError(f"{where}: the answer must be a string, got {type(answer).__name__}")
    return str(obj["id"]), str(answer), prov


def score_files(
    predictions: str | Path,
    gold: str | Path,
    task: str | None = None,
    passages: str | Path | None = None,
    ks: list[int] | None = None,
    match: str = "word",
    on_error: str = "fail",
    normalization: str = "kilt",
) -> dict[str, Any]:
    """Score a prediction file against gold -> {"task", "n_gold", "n_predicted", "metrics": {...}}."""
    ks = ks or [1, 5, 10]
    name = task or task_for_file(gold) or task_for_file(predictions)
    if name is None:
        raise UserError(
            f"--task: cannot tell the task from the file name {gold}; pass --task (one of {', '.join(TASKS)})"
        )
    spec = get_task(name)
    examples = load_examples(gold, spec, on_error=on_error, require_answers=True, unique_ids=True)
    if not examples:
        raise UserError(f"{gold}: no gold examples in the file")
    by_id = {ex.id: ex for ex in examples}  # unique: load_examples refused a repeated id
    texts: dict[str, Mapping[str, Any]] = {}
    if passages is not None:
        texts = {p.id: p.record for p in read_passage_lines(passages, on_error)}

    records = []
    seen: dict[str, int] = {}
    max_retrieved = 0
    for lineno, obj in iter_jsonl(predictions, on_error=on_error):
        where = f"{predictions}:{lineno}"
        pid, answer, prov = _prediction(obj, where)
        if pid not in by_id:
            raise UserError(
                f"{where}: prediction id {pid!r} is not in the gold file {gold}; predictions and gold must come from the same split"
            )
        if pid in seen:
            raise UserError(f"{where}: duplicate prediction id {pid!r} (first at line {seen[pid]})")
        seen[pid] = lineno
        for p in prov:
            ref = texts.get(str(p.get("passage_id")))
            if ref is not None and "text" not in p:
                p["text"] = ref.get("text", "")
                p.setdefault("title", ref.get("title"))
        max_retrieved = max(max_retrieved, len(prov))
        ex = by_id[pid]
        rec = score_example(
            spec.kind, answer, ex.answers, prov if prov else None, ex.provenance, ks, match, normalization
        )
        records.append(rec)
    if not records:
        raise UserError(f"{predictions}: no predictions in the file")
    missing = len(by_id) - len(seen)
    if missing:
        log.warning(
            "%d of %d gold examples have no prediction; metrics cover the %d predicted",
            missing,
            len(by_id),
            len(seen),
        )
    metrics = aggregate(records)
    if max_retrieved:  # recall@k beyond what was retrieved says nothing
        metrics = {
            k: v for k, v in metrics.items() if "@" not in k or int(k.rsplit("@", 1)[1]) <= max_retrieved
        }
    return {
        "task": spec.name,
        "predictions": str(predictions),
        "gold": str(gold),
        "n_gold": len(by_id),
        "n_predicted": len(seen),
        "normalization": normalization,
        "match": match,
        "metrics": metrics,
    }


def format_scores(result: Mapping[str, Any]) -> str:
    lines = [
        f"task {result['task']}: {result['n_predicted']} predictions / {result['n_gold']} gold examples "
        f"(EM/F1 normalisation: {result.get('normalization', 'kilt')})",
        f"{'metric':<24}{'value':>8}",
    ]
    for k, v in result["metrics"].items():
        if k == "n":
            continue
        lines.append(f"{k:<24}{v:>8.4f}")
    return "\n".join(lines)
