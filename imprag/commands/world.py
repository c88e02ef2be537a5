"""`imprag world`: generate a synthetic knowledge world (passages + KILT task files) for a seed."""

from __future__ import annotations

from dataclasses import dataclass

from imprag.config_io import option
from imprag.errors import UserError


@dataclass(kw_only=True)
class Options:
    # checked in run(), so a missing or bad value is one line naming the fix
    out: str | None = option(
        None, "folder to write passages.jsonl, tasks/ and world.json (required)", metavar="DIR"
    )
    seed: str = option("0", "random seed; the same seed and size give byte-identical files")
    entities: str | None = option(None, "number of entities = passages (default 1500; 50 to 100000)")


def _int(value: str, flag: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise UserError(f"{flag} must be an integer, got {value!r}") from None


def run(args: Options) -> int:
    from imprag.demo.world import DEFAULT_ENTITIES, check_entities, generate_world

    if not args.out:
        raise UserError("--out is required: pass the folder to write the world to, e.g. --out world/")
    seed = _int(args.seed, "--seed")
    entities = check_entities(
        _int(args.entities, "--entities") if args.entities is not None else DEFAULT_ENTITIES
    )
    s = generate_world(args.out, seed=seed, entities=entities)
    examples = sum(sum(c.values()) for c in s.tasks.values())
    print(
        f"wrote {s.passages} passages and {examples} examples in {len(s.tasks)} tasks to {s.out_dir} (seed {s.seed})"
    )
    for task, counts in s.tasks.items():
        print(f"  {task:<16} " + "  ".join(f"{split} {n}" for split, n in counts.items()))
    return 0
