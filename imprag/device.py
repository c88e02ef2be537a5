"""The one `--device` rule of every command: `auto` is cuda:LOCAL_RANK when CUDA is available, else cpu."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from imprag.errors import UserError

if TYPE_CHECKING:
    import torch

THREADS_HELP = "torch CPU threads (default: torch's choice; 1 is often fastest for small models on busy CPUs)"
DEVICE_HELP = "torch device: auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N"


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    import torch  # here: the commands import this module for DEVICE_HELP without loading torch

    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def set_threads(threads: int | None) -> None:
    """--threads N: torch's CPU threads (None: torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads {threads}: must be at least 1")
    import torch

    torch.set_num_threads(threads)
