"""`imprag calibrate`: compute a model's retrieval calibration means from a passages file (no labels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imprag.config_io import option
from imprag.device import DEVICE_HELP, pick_device


@dataclass(kw_only=True)
class Options:
    model: Path = option(help="ImpRAG / Hugging Face model folder")
    passages: Path = option(help="passages JSONL to sample from")
    out: Path | None = option(None, "folder to save the whole model into (default: --model itself)")
    max_passages: int = option(512, "passages sampled")
    seed: int = option(0, "seed of the sample")
    device: str = option("auto", DEVICE_HELP)


def run(args: Options) -> int:
    from imprag.errors import UserError
    from imprag.model.calibration import sample_passage_texts
    from imprag.model.imprag import ImpRAG

    if args.max_passages < 1:
        raise UserError(f"--max-passages must be at least 1 (got {args.max_passages})")
    model = ImpRAG.from_pretrained(args.model, device=pick_device(args.device))
    if model.config.calibration == "none":
        raise UserError(f"{args.model}: this model's calibration is 'none'; nothing to calibrate")
    cal = model.calibrate(sample_passage_texts(args.passages, args.max_passages, args.seed))
    if args.out is not None:
        model.save_pretrained(args.out)
    else:
        cal.save(args.model)
    where = args.out or args.model
    print(f"calibration: passage mean and {len(cal.query)} prompt-format means saved in {where}")
    return 0
