"""The pieces of the layer-group loop: per-layer key/value stores and the 4-D attention masks.

Shapes: B batch, T new tokens, S keys already seen (including T), P passage-prefix tokens,
h_k key/value heads, d head size.
"""

from __future__ import annotations

import torch


class LayerKV:
    """Stands in for a Hugging Face `Cache`: a layer's attention calls `update(k, v, layer_idx)` and attends
    to what it returns, so a per-layer prefix here is how the middle layers see the passages.

    mode "read":   prepend the stored (K, V) and store nothing (training forward; safe to recompute under
                   activation checkpointing).
    mode "append": prepend and keep the result (generation: prefill, then one token per step).
    mode "record": keep the layer's own (K, V) and return them unchanged (passage encoding).
    """

    def __init__(
        self, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None, mode: str = "read"
    ):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = dict(prefix or {})
        self.mode = mode

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # (B, h_k, T, d) each
        if self.mode == "record":
            self.kv[layer_idx] = (key_states, value_states)
            return key_states, value_states
        past = self.kv.get(layer_idx)
        if past is not None:
            key_states = torch.cat([past[0], key_states], dim=-2)
            value_states = torch.cat([past[1], value_states], dim=-2)
        if self.mode == "append":
            self.kv[layer_idx] = (key_states, value_states)
        return key_states, value_states


def attention_mask_4d(
    key_valid: torch.Tensor, q_len: int, prefix_valid: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask (B, 1, T, P + S) for T new queries that are the last T of S sequence keys.

    key_valid (B, S) bool: which sequence keys are real tokens (not padding).
    prefix_valid (B, P) bool or None: the passage prefix every query may see (middle layers only).
    Query i sits at key index S - T + i and sees sequence keys j <= S - T + i that are valid; it always sees
    itself so that padding rows never get an all-masked (NaN) softmax.
    """
    B, S = key_valid.shape
    device = key_valid.device
    q_index = torch.arange(S - q_len, S, device=device)[:, None]  # (T, 1)
    k_index = torch.arange(S, device=device)[None, :]  # (1, S)
    allowed = (k_index <= q_index)[None] & key_valid[:, None, :]  # (B, T, S)
    allowed = allowed | (k_index == q_index)[None]
    if prefix_valid is not None:
        allowed = torch.cat([prefix_valid[:, None, :].expand(B, q_len, -1), allowed], dim=-1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def positions_from_mask(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids (B, T) that count only real tokens, so left or right padding gives the same positions."""
    return offset + (mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token, for any padding side."""
    T = mask.shape[1]
    return T - 1 - mask.long().flip(-1).argmax(-1)
