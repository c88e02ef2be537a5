"""The synthetic knowledge world: invented entities, Wikipedia-like passages about them, and KILT-format
task files mirroring the paper's eight evaluation formats plus retrieval-free training tasks.

    generate_world("world/", seed=0, entities=1500)

writes
    world/passages.jsonl                      {"id", "title", "text", "kind"}: one passage per entity
    world/tasks/<task>/{train,dev,test}.jsonl KILT lines (retrieval-free tasks: train only)
    world/world.json                          seed, entity counts, example counts per task and split

Facts are invented (names from syllables), so a closed-book model cannot know them; near-miss twins
("Elvara Montis" / "Elvira Montis") and shared surnames make retrieval need precision. Entities are split
80/10/10 and every example lands in its subject's split: dev/test ask about other facts than train,
over the same corpus. Same seed and size -> byte-identical files. See world_graph (entities and facts),
world_text (passages) and world_tasks (examples).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imprag.demo.world_graph import KINDS, SPLITS, World, build_graph
from imprag.demo.world_tasks import make_tasks
from imprag.demo.world_text import render_world
from imprag.errors import UserError
from imprag.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SEEN_QA = ("nq", "hotpotqa")  # QA formats with retrieval labels that training uses
UNSEEN_QA = ("simpleqa", "2wikimultihopqa")  # same QA format, other relations and phrasing
UNSEEN_FORMATS = ("trex", "zsre", "fever", "aida")  # formats never given retrieval labels
RETRIEVAL_FREE = ("rc", "denoise", "nextsent", "prevsent")  # LM loss only (train split only)
EVAL_TASKS = SEEN_QA + UNSEEN_QA + UNSEEN_FORMATS
ALL_TASKS = EVAL_TASKS + RETRIEVAL_FREE
# which splits each task has (unseen tasks carry a small train split, never for retrieval training)
TASK_SPLITS: dict[str, tuple[str, ...]] = {t: SPLITS for t in EVAL_TASKS} | {
    t: ("train",) for t in RETRIEVAL_FREE
}

DEFAULT_ENTITIES = 1500
MIN_ENTITIES, MAX_ENTITIES = 50, 100_000
FORMAT_VERSION = 1


@dataclass
class WorldSummary:
    """What `generate_world` wrote (also saved as world.json, minus `out_dir`)."""

    out_dir: str
    seed: int
    entities: int
    kinds: dict[str, int]  # entities per kind
    entity_splits: dict[str, int]  # entities per split (whose questions land in that split)
    twins: int  # entities whose name is a near-miss of another's
    passages: int
    words_per_passage: dict[str, float]  # min / mean / max
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> split -> examples
    groups: dict[str, list[str]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out_dir")  # keep world.json byte-identical wherever it is written
        return d

    def task_file(self, task: str, split: str) -> Path:
        return Path(self.out_dir) / "tasks" / task / f"{split}.jsonl"


def check_entities(n: int, flag: str = "--entities") -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not MIN_ENTITIES <= n <= MAX_ENTITIES:
        raise UserError(f"{flag} must be an integer from {MIN_ENTITIES} to {MAX_ENTITIES}, got {n!r}")
    return n


def build_world(seed: int = 0, entities: int = DEFAULT_ENTITIES) -> World:
    """The world in memory: entities with facts, passage ids and passage text (nothing written)."""
    check_entities(entities)
    world = build_graph(seed, entities)
    render_world(world, seed)
    width = max(6, len(str(len(world.entities) - 1)))
    for i, e in enumerate(world.entities):
        e.pid = f"s{i:0{width}d}"
    return world


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def generate_world(out_dir: str | Path, seed: int = 0, entities: int = DEFAULT_ENTITIES) -> WorldSummary:
    """Write passages.jsonl, tasks/<task>/<split>.jsonl and world.json under `out_dir` (atomically, file by
    file; world.json last, so its presence marks a finished world). Returns what was written."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"--seed must be an integer, got {seed!r}")
    check_entities(entities)
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; pass a folder path")
    # hundreds of thousands of small dicts and no reference cycles: the cyclic GC would rescan the
    # growing heap again and again (half the run time at 20k entities), so it pauses while we build
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        world = build_world(seed, entities)
        tasks = make_tasks(world, seed)
    finally:
        if gc_was_on:
            gc.enable()

    marker = out / "world.json"
    marker.unlink(missing_ok=True)  # an interrupted rewrite must not look finished
    passages = [{"id": e.pid, "title": e.name, "text": e.text, "kind": e.kind} for e in world.entities]
    atomic_write_text(out / "passages.jsonl", _jsonl(passages))
    counts: dict[str, dict[str, int]] = {}
    for task in ALL_TASKS:
        counts[task] = {}
        for split in TASK_SPLITS[task]:
            rows = tasks[task].get(split, [])
            atomic_write_text(out / "tasks" / task / f"{split}.jsonl", _jsonl(rows))
            counts[task][split] = len(rows)

    words = [len(p["text"].split()) for p in passages]
    summary = WorldSummary(
        out_dir=str(out),
        seed=seed,
        entities=len(world.entities),
        kinds={k: v for k, v in Counter(e.kind for e in world.entities).most_common() if k in KINDS},
        entity_splits={s: sum(e.split == s for e in world.entities) for s in SPLITS},
        twins=sum(e.twin_of is not None for e in world.entities),
        passages=len(passages),
        words_per_passage={"min": min(words), "mean": round(sum(words) / len(words), 1), "max": max(words)},
        tasks=counts,
        groups={
            "seen_qa": list(SEEN_QA),
            "unseen_qa": list(UNSEEN_QA),
            "unseen_formats": list(UNSEEN_FORMATS),
            "retrieval_free": list(RETRIEVAL_FREE),
        },  # fmt: skip
    )
    atomic_write_json(marker, summary.to_json())
    log.info("world: %d passages, %d examples in %d tasks, %.1fs", len(passages),
             sum(sum(c.values()) for c in counts.values()), len(counts), time.perf_counter() - t0)  # fmt: skip
    return summary
