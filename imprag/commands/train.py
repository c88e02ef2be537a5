"""`imprag train --config FILE.yaml [--dotted.overrides]`: warmup (multi-label NCE) and self-distillation
stages plus the response LM loss, in one run; single process or under torchrun.

    imprag train --config configs/train_example.yaml --optim.lr 1e-4 --stages.0.steps 200
    torchrun --nproc-per-node 2 -m imprag train --config ...      (DDP; gloo on CPU, nccl on GPU)
    imprag train --config ... --resume                               (continue after a kill)
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from imprag.config_io import add_config_flags
    from imprag.train.config import TrainConfig

    parser.usage = "%(prog)s --config FILE.yaml [--dotted.key VALUE ...] [--print-config] [--resume]"
    parser.add_argument(
        "--config", metavar="FILE.yaml", default=None, help="YAML config (see configs/train_example.yaml)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    add_config_flags(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from imprag.config_io import dump_yaml, flag_overrides, load_config
    from imprag.train.config import TrainConfig

    cfg = load_config(TrainConfig, args.config, flag_overrides(args))
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from imprag.train.loop import train

    final = train(cfg)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained model: {final}")
    return 0
