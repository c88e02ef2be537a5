"""Passages' middle-layer key/value kept across generate calls, for the independent reader.

Read independently, a passage's key/value in layers b..t depend on its own tokens only (it starts at
position 0 and sees no other passage), so a passage that several questions or methods read is run through
layers 0..t once. Shapes: h_k key/value heads, l the passage's tokens, d head size.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

KV = dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (K, V), each (h_k, l, d)


class PassageKVCache:
    """Least-recently-used entries keyed by (weights version, precision, token ids), at most `max_bytes`.

    The weights version (see `weights_version`) changes whenever a parameter is written in place (an
    optimiser step, load_state_dict), so entries computed with other weights are never returned."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, KV] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> KV | None:
        kv = self._entries.get(key)
        if kv is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return kv

    def put(self, key: tuple, kv: KV) -> None:
        if key in self._entries:
            return
        size = sum(k.nbytes + v.nbytes for k, v in kv.values())
        if size > self.max_bytes:
            return
        self._entries[key] = kv
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= sum(k.nbytes + v.nbytes for k, v in old.values())


def weights_version(module: torch.nn.Module) -> int:
    """A number that grows whenever any parameter of `module` is modified in place."""
    return sum(p._version for p in module.parameters())
