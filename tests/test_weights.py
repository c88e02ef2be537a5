"""Damaged or partial weights are refused by ImpRAG.from_pretrained with one UserError naming the file:
truncated safetensors (single file and shard), a missing shard, a shard from elsewhere, a file of another
model's tensors, wrong shapes, integer tensors, a damaged pytorch_model.bin, a broken shard index. Intact
folders of every supported architecture (tied embeddings included) still load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from imprag.errors import UserError
from imprag.model.imprag import ImpRAG
from imprag.model.tiny import save_tiny

ST = "model.safetensors"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_model_dir) -> Path:
    """tiny_model_dir re-saved as 4 shards with a model.safetensors.index.json."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded") / "llama"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(out, max_shard_size="300KB")
    for f in tiny_model_dir.glob("tokenizer*"):
        shutil.copy(f, out)
    assert len(list(out.glob("model-*.safetensors"))) >= 3
    return out


def shards(d: Path) -> list[Path]:
    return sorted(d.glob("model-*.safetensors"))


def truncate(p: Path, keep: float) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


def rewrite(p: Path, change) -> None:
    sd = load_file(p)
    save_file(change(sd), p)


def other_tensors(sd):
    return {"foo.weight": torch.zeros(3, 3)}


def wrong_shape(sd):
    k = next(k for k in sd if "q_proj" in k)
    return {**sd, k: torch.zeros(3, 3)}


def as_int8(sd):
    return {k: (v * 100).to(torch.int8) for k, v in sd.items()}


def bin_file(d: Path, damage) -> None:
    sd = load_file(d / ST)
    (d / ST).unlink()
    torch.save(sd, d / "pytorch_model.bin")
    damage(d / "pytorch_model.bin")


# (name, which folder, damage, the file the message names, words it says)
CASES = [
    ("truncated", "single", lambda d: truncate(d / ST, 0.5), ST, "truncated"),
    ("one byte short", "single", lambda d: truncate(d / ST, 0.99999), ST, "truncated"),
    ("empty file", "single", lambda d: truncate(d / ST, 0), ST, "truncated"),
    ("not safetensors", "single", lambda d: (d / ST).write_text("hello " * 100), ST, "damaged"),
    ("other model's tensors", "single", lambda d: rewrite(d / ST, other_tensors), ST, "lack"),
    ("wrong shapes", "single", lambda d: rewrite(d / ST, wrong_shape), ST, "shapes"),
    ("integer tensors", "single", lambda d: rewrite(d / ST, as_int8), ST, "I8"),
    (
        "truncated .bin",
        "single",
        lambda d: bin_file(d, lambda p: truncate(p, 0.5)),
        "pytorch_model.bin",
        "damaged",
    ),
    (
        "garbage .bin",
        "single",
        lambda d: bin_file(d, lambda p: p.write_bytes(b"x" * 99)),
        "pytorch_model.bin",
        "damaged",
    ),
    ("missing shard", "sharded", lambda d: shards(d)[1].unlink(), "model-00002-of-", "shard missing"),
    ("truncated shard", "sharded", lambda d: truncate(shards(d)[2], 0.5), "model-00003-of-", "truncated"),
    (
        "shard from elsewhere",
        "sharded",
        lambda d: shutil.copy(shards(d)[0], shards(d)[1]),
        "model-00002-of-",
        "other tensors",
    ),
    (
        "broken index",
        "sharded",
        lambda d: (d / f"{ST}.index.json").write_text("{"),
        f"{ST}.index.json",
        "index",
    ),
]


@pytest.mark.parametrize("name,which,damage,file,words", CASES, ids=[c[0] for c in CASES])
def test_damaged_weights_are_one_clear_user_error(
    tmp_path, tiny_model_dir, sharded, name, which, damage, file, words
):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir if which == "single" else sharded, d)
    damage(d)
    with pytest.raises(UserError) as e:
        ImpRAG.from_pretrained(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and file in msg and words in msg, msg
    assert "checkpoint again" in msg  # the fix


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("tied", [False, True])
def test_intact_folders_still_load(tmp_path, arch, tied):
    d = save_tiny(tmp_path / arch, arch=arch, tie_word_embeddings=tied)
    m = ImpRAG.from_pretrained(d, dtype="bfloat16")  # stored fp32, loaded bf16: a cast, not damage
    assert m.dtype == torch.bfloat16


def test_intact_sharded_folder_loads_the_same_weights(tiny_model_dir, sharded):
    a, b = (
        ImpRAG.from_pretrained(tiny_model_dir).lm.state_dict(),
        ImpRAG.from_pretrained(sharded).lm.state_dict(),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
