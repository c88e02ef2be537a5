"""Cutting a prompt to its window and padding token rows: one rule for inference (ImpRAG) and training
(train/collate.Collator), so a long prompt is read the same way in both."""

from __future__ import annotations

import torch


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id; its EOS (or 0) when it has none."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def kept_positions(ids: list[int], limit: int, bos_id: int | None) -> list[int]:
    """Positions of a prompt kept in a `limit`-token window: its BOS when it starts with one, then its
    end (the instruction's end and the last token, whose state is the query); the middle is dropped."""
    if len(ids) <= limit:
        return list(range(len(ids)))
    head = [0] if bos_id is not None and ids[0] == bos_id else []
    return head + list(range(len(ids) - (limit - len(head)), len(ids)))


def pad(rows: list[list[int]], value: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows -> (B, T) long tensor filled with `value` around them and its (B, T) mask of real entries
    (T >= 1, so an empty batch row still has a shape)."""
    width = max(1, max((len(r) for r in rows), default=1))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            continue
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask
