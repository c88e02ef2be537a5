"""`imprag train --config FILE.yaml [--dotted.overrides]`: warmup (multi-label NCE) and self-distillation
stages plus the response LM loss, in one run; single process or under torchrun.

    imprag train --config configs/train_example.yaml --optim.lr 1e-4 --stages.0.steps 200
    imprag train --config ... --stages.distill.epochs 2              (a stage by its name)
    torchrun --nproc-per-node 2 -m imprag train --config ...      (DDP; gloo on CPU, nccl on GPU)
    imprag train --config ... --resume                               (continue after a kill)
"""

from __future__ import annotations

import os

from imprag.train.config import TrainConfig as Options


def run(cfg: Options) -> int:
    from imprag.train.loop import train

    final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained model: {final}")
    return 0
