"""`imprag world`: generate a synthetic knowledge world (passages + KILT task files) for a seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imprag.config_io import option


@dataclass(kw_only=True)
class Options:
    out: Path = option(help="folder to write passages.jsonl, tasks/ and world.json", metavar="DIR")
    seed: int = option(0, "random seed; the same seed and size give byte-identical files")
    entities: int | None = option(None, "number of entities = passages (default 1500; 50 to 100000)")


def run(args: Options) -> int:
    from imprag.demo.world import DEFAULT_ENTITIES, generate_world

    entities = DEFAULT_ENTITIES if args.entities is None else args.entities  # generate_world checks it
    s = generate_world(args.out, seed=args.seed, entities=entities)
    examples = sum(sum(c.values()) for c in s.tasks.values())
    print(
        f"wrote {s.passages} passages and {examples} examples in {len(s.tasks)} tasks to {s.out_dir} (seed {s.seed})"
    )
    for task, counts in s.tasks.items():
        print(f"  {task:<16} " + "  ".join(f"{split} {n}" for split, n in counts.items()))
    return 0
