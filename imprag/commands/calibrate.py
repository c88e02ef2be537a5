"""`imprag calibrate`: compute a model's retrieval calibration means from a passages file (no labels)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imprag.device import DEVICE_HELP, pick_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="ImpRAG / Hugging Face model folder")
    parser.add_argument("--passages", type=Path, required=True, help="passages JSONL to sample from")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder to save the whole model into (default: --model itself)"
    )
    parser.add_argument("--max-passages", type=int, default=512, help="passages sampled (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def run(args: argparse.Namespace) -> int:
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
