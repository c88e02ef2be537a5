"""FSDP (torch's fully_shard) for the ImpRAG training objective.

ImpRAG runs a decoder layer several times per forward (the bottom layers for the query and again for the
passage vectors; layers 0..t for the passages and again for the prompt; the whole stack for LM-only rows
and again for rows with passages). A per-layer FSDP unit frees its gathered weights after the first of
those calls finishes its backward while the others still need them, so the whole model is one FSDP unit:
gradients are reduce-scattered and the optimizer state (2x the weights for AdamW) is sharded over the
processes; the weights are gathered whole for each micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from imprag.model.imprag import ImpRAG


def shard(objective: nn.Module, model: ImpRAG) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(objective)
    return objective


def full_state_dict(wrapped: nn.Module) -> dict[str, torch.Tensor]:
    """The HF model's full state dict on CPU (a collective: call on every process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("imprag.lm."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def full_optimizer_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_optimizer_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextmanager
def unsharded(wrapped: nn.Module) -> Iterator[None]:
    """Gather the root unit's parameters (embeddings, head) for calls that bypass the root forward."""
    wrapped.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        wrapped.reshard()  # type: ignore[operator]
