"""Process-group setup under torchrun (or any launcher that sets RANK/WORLD_SIZE) and the few collectives
the trainer needs. A single process needs no process group: every helper then works locally.

In-batch negatives: `gather_with_local_grad` concatenates every process's rows; only this process's
rows keep their autograd graph. Every process then computes the *whole* global loss, so the gradient it
gets is exactly d(global loss)/d(its own rows); summed over processes (the data-parallel all-reduce
averages, hence the loss is multiplied by the world size) that is the single-process gradient.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imprag.device import pick_device
from imprag.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a new tensor, no autograd)."""
        x = x.detach().clone()
        if self.distributed:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def all_gather_object(self, obj):
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_with_local_grad(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate each process's rows of x (N_r, D) in rank order -> (sum N_r, D).

        `sizes` (every process's N_r) is known to all processes from the shared batch plan, so rows are
        padded to the largest and the padding dropped. Rows of other processes carry no gradient."""
        if not self.distributed:
            return x
        width = max(sizes)
        pad = torch.zeros((width - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        local = torch.cat([x.detach(), pad]).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        out = [x if r == self.rank else parts[r][: sizes[r]] for r in range(self.world_size)]
        return torch.cat(out)

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Read torchrun's environment; start the process group when there are several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistEnv(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise UserError("--distributed.backend nccl needs CUDA devices; use gloo on CPU")
    here = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        here = True
    if dev.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    log.info("process %d of %d on %s (%s)", rank, world, dev, backend)
    if rank != 0:  # one copy of the progress logs; warnings still come from every process
        logging.getLogger("imprag").setLevel(logging.WARNING)
    return DistEnv(rank, world, local_rank, dev, here)
