"""Real weights: SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 kv heads of 64) split at b=7, t=21."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from imprag.model.imprag import ImpRAG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_dir) -> ImpRAG:
    m = ImpRAG.from_pretrained(smollm2_dir)
    m.calibrate(  # the default retrieval state subtracts label-free means (imprag index computes them)
        [
            "Paris: Paris is the capital and largest city of France.",
            "Tokyo: a city in Japan.",
            "Hamlet: a tragedy by William Shakespeare.",
            "Seine: a river that flows through Paris.",
        ]
    )
    return m


def test_loads_with_the_paper_split(smollm2):
    assert smollm2.num_layers == 30
    assert (smollm2.config.b, smollm2.config.t) == (7, 21)
    assert (smollm2.num_heads, smollm2.num_kv_heads, smollm2.head_dim) == (9, 3, 64)
    assert smollm2.dim == 192


def test_answers_paris_without_passages(smollm2):
    out = smollm2.generate(["The capital of France is"], max_new_tokens=6)[0]
    assert "Paris" in out.text


def test_split_forward_equals_hf_logits(smollm2):
    ids, mask = smollm2.encode_prompts(["The capital of France is", "Q: who wrote Hamlet? A:"])
    with torch.no_grad():
        ref = smollm2.lm(input_ids=ids, attention_mask=mask).logits
        out = smollm2.forward(ids, mask).logits
    valid = mask.bool()
    assert_close(out[valid], ref[valid], rtol=1e-4, atol=1e-4)


def test_embeddings_are_kv_wide_and_batch_independent(smollm2):
    prompts = ["Q: What is the capital of France? A:", "Q: Who wrote Hamlet? A:"]
    passages = ["Paris: Paris is the capital and largest city of France.", "Tokyo: a city in Japan."]
    q, p = smollm2.embed_queries(prompts), smollm2.embed_passages(passages)
    assert q.shape == (2, 192) and p.shape == (2, 192)
    assert_close(smollm2.embed_queries(prompts[1:]), q[1:], rtol=1e-4, atol=1e-4)
    assert_close(smollm2.embed_passages(passages[:1]), p[:1], rtol=1e-4, atol=1e-4)


def test_reader_changes_only_what_comes_after_layer_b(smollm2):
    ids, mask = smollm2.encode_prompts(["Q: What is the capital of Zorbania? A:"], with_passages=True)
    passages = smollm2.tokenize_passages([["Zorbania: The capital of Zorbania is Quillton, a port city."]])
    last = torch.tensor([ids.shape[1] - 1])
    with torch.no_grad():
        read = smollm2.forward(ids, mask, passages=passages, query_index=last)
        plain = smollm2.forward(ids, mask, query_index=last)
    assert_close(read.query_vectors, plain.query_vectors, rtol=1e-4, atol=1e-4)
    assert (read.logits - plain.logits).abs().max() > 1.0


def test_save_load_round_trip(smollm2, tmp_path):
    smollm2.save_pretrained(tmp_path / "ckpt")
    again = ImpRAG.from_pretrained(tmp_path / "ckpt")
    assert again.config == smollm2.config
    assert again.fingerprint() == smollm2.fingerprint()
    prompts = ["The capital of France is"]
    assert_close(again.embed_queries(prompts), smollm2.embed_queries(prompts))
