"""Where each supported Hugging Face architecture keeps the parts the layer-group loop needs.

Adding an architecture is one entry, as long as its decoder layer has the Llama call signature
(hidden_states, attention_mask=, position_embeddings=, cache=) and its attention calls `cache.update`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from imprag.errors import UserError


@dataclass(frozen=True)
class ArchSpec:
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"
    head: str = "lm_head"
    attn: str = "self_attn"  # inside a layer
    input_norm: str = "input_layernorm"  # inside a layer
    q_proj: str = "q_proj"  # inside attn
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    q_norm: str | None = None  # per-head RMSNorm applied after the projection (Qwen3)
    k_norm: str | None = None


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(),
    "mistral": ArchSpec(),
    "qwen2": ArchSpec(),
    "qwen3": ArchSpec(q_norm="q_norm", k_norm="k_norm"),
}


def spec_for(model_type: str) -> ArchSpec:
    if model_type not in ARCHS:
        raise UserError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(sorted(ARCHS))} "
            "(add an entry to imprag/model/arch.py ARCHS)"
        )
    return ARCHS[model_type]


def get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def rotary_fn(lm: Any):
    """The architecture's own `apply_rotary_pos_emb(q, k, cos, sin)` from its modeling module."""
    return importlib.import_module(type(lm).__module__).apply_rotary_pos_emb
