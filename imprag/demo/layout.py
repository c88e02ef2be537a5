"""The world layout: what a folder given to `imprag demo --world DIR` must hold, and what the demo does
with what it holds.

    DIR/passages.jsonl                     {"id", "title", "text"} per line: the corpus
    DIR/tasks/nq/{train,dev}.jsonl         required: NQ-style questions (KILT) with gold provenance
                                           ({"provenance": [{"passage_id": ...}]} naming passages above)
    DIR/tasks/hotpotqa/{train,dev}.jsonl   optional: a second seen QA format, trained on like nq
    DIR/tasks/<task>/test.jsonl            every one present is evaluated (nq, hotpotqa, simpleqa,
                                           2wikimultihopqa, trex, zsre, fever, aida, or another task of the
                                           registry that needs retrieval); missing ones are skipped and named
    DIR/tasks/{rc,denoise,nextsent}/train.jsonl
                                           optional retrieval-free training data; built from the passages
                                           (and nq's training questions) under the demo's --out when absent

The folder is only read. `inspect_world` checks it all before the demo starts any work (one clear line
naming the file and the fix for anything wrong) and returns the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from imprag.data.kilt import load_examples
from imprag.data.retrieval_free import FREE_TASKS
from imprag.data.tasks import EVAL_TASKS, TASKS
from imprag.errors import UserError

log = logging.getLogger(__name__)

SEEN = ("nq", "hotpotqa")  # QA formats trained on with retrieval labels (BM25-mined), in this order
KILT_HINT = '{"id", "input", "output": [{"answer": ...}, {"provenance": [{"passage_id": ...}]}]}'


@dataclass
class WorldPlan:
    """What the demo takes from a world folder."""

    root: Path
    mine: list[tuple[str, str]]  # (task, split) files mined for retrieval labels
    train: list[str]  # seen tasks whose mined train split trains retrieval + reading
    evaluate: list[str]  # tasks whose test split is evaluated, in the paper's column order
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it is not evaluated
    build_free: list[str] = field(default_factory=list)  # retrieval-free tasks to build from the passages

    @classmethod
    def generated(cls, root: Path) -> WorldPlan:
        """The demo's own synthetic world: every seen task trained on, all eight formats evaluated."""
        return cls(root, [(t, s) for t in SEEN for s in ("train", "dev")], list(SEEN), list(EVAL_TASKS))


def task_file(root: Path, task: str, split: str) -> Path:
    return root / "tasks" / task / f"{split}.jsonl"


def _rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def _check_gold(path: Path, task: str, passages: Path, ids: set[str]) -> None:
    examples = load_examples(path, task, require_answers=True)
    if not examples:
        raise UserError(
            f"{path}: no examples; add {task} questions in KILT format, one per line: {KILT_HINT}"
        )
    with_gold = sum(any(p.passage_id in ids for p in ex.provenance) for ex in examples)
    if with_gold == 0:
        raise UserError(
            f"{path}: no example names a passage of {passages} as gold provenance; give each question "
            f'the id of the passage that answers it: "output": [..., {{"provenance": [{{"passage_id": ...}}]}}]'
        )
    if with_gold < len(examples):
        log.warning("%s: %d of %d examples name no gold passage of %s", path, len(examples) - with_gold,
                    len(examples), passages)  # fmt: skip


def inspect_world(root: str | Path) -> WorldPlan:
    """Check a world folder (UserError naming the file and the fix) and plan the demo on it."""
    from imprag.passage import read_passages

    root = Path(root)
    layout = "passages.jsonl and tasks/<task>/{train,dev,test}.jsonl"
    if not root.is_dir():
        raise UserError(f"--world {root}: not a folder; pass a folder holding {layout}")
    passages = root / "passages.jsonl"
    if not passages.is_file():
        raise UserError(
            f'--world {root}: no passages.jsonl; put the corpus there, one {{"id", "title", "text"}} per line'
        )
    ids = set(read_passages(passages)[0])  # a bad line: file:line and what is wrong
    for split in ("train", "dev"):
        if not task_file(root, "nq", split).is_file():
            raise UserError(
                f"--world {root}: missing tasks/nq/{split}.jsonl; add NQ-style {split} questions with gold "
                f"provenance there, one KILT line each: {KILT_HINT}"
            )
    for split in ("train", "dev"):
        _check_gold(task_file(root, "nq", split), "nq", passages, ids)
    mine = [("nq", "train"), ("nq", "dev")]
    train = ["nq"]
    for task in SEEN[1:]:
        for split in ("train", "dev"):
            path = task_file(root, task, split)
            if path.is_file():
                load_examples(path, task, require_answers=True)
                mine.append((task, split))
        if (task, "train") in mine:
            train.append(task)

    plan = WorldPlan(root, mine, train, [])
    others = sorted(t for t, spec in TASKS.items() if spec.needs_retrieval and t not in EVAL_TASKS)
    for task in (*EVAL_TASKS, *others):
        path = task_file(root, task, "test")
        if not path.is_file():
            if task in EVAL_TASKS:
                plan.skipped[task] = f"no {_rel(root, path)}"
            continue
        if load_examples(path, task, require_answers=True):
            plan.evaluate.append(task)
        else:
            plan.skipped[task] = f"{_rel(root, path)} is empty"
    tasks_dir = root / "tasks"
    for d in sorted(p for p in tasks_dir.iterdir() if p.is_dir()):
        if d.name not in TASKS:
            plan.skipped[d.name] = f"tasks/{d.name}: not a task name imprag knows (see imprag/data/tasks.py)"
    if not plan.evaluate:
        raise UserError(
            f"--world {root}: no tasks/<task>/test.jsonl to evaluate; add at least one, e.g. tasks/nq/test.jsonl"
        )

    for task in FREE_TASKS:
        path = task_file(root, task, "train")
        if path.is_file():
            load_examples(path, task, require_answers=True)
        else:
            plan.build_free.append(task)
    for task, why in plan.skipped.items():
        log.warning("--world %s: %s not evaluated (%s)", root, task, why)
    if plan.build_free:
        log.info("--world %s: no %s training data: built from the passages", root, "/".join(plan.build_free))
    return plan
