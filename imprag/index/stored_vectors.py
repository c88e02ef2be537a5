"""Passage vectors a training run already computed, stored beside its final model so that `imprag index`
need not run the bottom layers over the corpus again.

The cached retrieval warmup (imprag.train.retrieval_cache) ends with every training passage's index vector,
computed exactly from its cached layer-b input. When no later stage moved the retrieval path, those are the
final model's index vectors: the trainer writes them into final/ with the model's fingerprint and the
passage length they were cut to, and `model_encoder` serves them (a passage is found by a hash of its
text; any other passage is embedded as usual).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

VECTORS_NAME = "passage_vectors.safetensors"


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def save_passage_vectors(
    directory: str | Path, texts: list[str], vectors: torch.Tensor, fingerprint: str, max_length: int
) -> Path:
    """vectors (N, D) float32, row i = texts[i]'s final index vector."""
    from safetensors.torch import save_file

    digests = torch.frombuffer(bytearray(b"".join(text_digest(t) for t in texts)), dtype=torch.uint8)
    path = Path(directory) / VECTORS_NAME
    meta = {"fingerprint": fingerprint, "max_length": json.dumps(max_length)}
    save_file(
        {"vectors": vectors.float().contiguous(), "digests": digests.view(len(texts), 16).clone()},
        str(path),
        metadata=meta,
    )
    return path


def load_passage_vectors(directory: str | Path, fingerprint: str, max_length: int) -> dict[bytes, np.ndarray]:
    """{text digest: (D,) float32} when the folder holds vectors made by these weights at this passage length;
    otherwise {} (the caller embeds)."""
    from safetensors import safe_open

    path = Path(directory) / VECTORS_NAME
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        if meta.get("fingerprint") != fingerprint or meta.get("max_length") != json.dumps(max_length):
            return {}
        vectors, digests = f.get_tensor("vectors"), f.get_tensor("digests")
    return {bytes(d): v for d, v in zip(digests, vectors)}
