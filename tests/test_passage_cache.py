"""The independent reader's passage key/value cache: the same prefix and answers as encoding anew."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from imprag.model.config import ImpRAGConfig
from imprag.model.imprag import ImpRAG
from imprag.model.passage_cache import PassageKVCache
from imprag.model.tiny import build_tokenizer, tiny_model

PROMPTS = ["The capital of France is", "Q: who wrote the book? A:", "Is it true? A:"]
PASSAGES = [
    ["Paris is a city on the Seine.", "Berlin is the capital of Germany."],
    ["The author wrote the book.", "Paris is a city on the Seine.", "0 1 2 3"],
    [],
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def make(tok, reader="independent") -> ImpRAG:
    torch.manual_seed(0)
    return ImpRAG(tiny_model("llama", tok), tok, ImpRAGConfig(b=1, t=3, k=3, l_max=12, reader=reader))


def test_cached_prefix_equals_encoding_the_passages_anew(tok):
    m = make(tok)
    read = m.tokenize_passages(PASSAGES)
    want, want_valid = m.encode_passages(read)
    m.passage_cache = PassageKVCache()
    for _ in range(2):  # first call fills the cache, the second reads every passage from it
        got, got_valid = m._encode_read_passages(read)
        assert torch.equal(got_valid, want_valid) and got.keys() == want.keys()
        for i in want:
            for g, w in zip(got[i], want[i]):
                assert_close(g * want_valid[:, None, :, None], w * want_valid[:, None, :, None])
    # 5 passages, one of them twice: 4 run through the model once, then all 4 found
    assert len(m.passage_cache) == 4
    assert (m.passage_cache.misses, m.passage_cache.hits) == (4, 4)


def test_cached_generation_equals_uncached(tok):
    m = make(tok)
    want = m.generate(PROMPTS, passages=PASSAGES, max_new_tokens=6)
    m.passage_cache = PassageKVCache()
    for _ in range(2):
        got = m.generate(PROMPTS, passages=PASSAGES, max_new_tokens=6)
        assert [g.token_ids for g in got] == [w.token_ids for w in want]
    # one prompt alone reads the same cached key/value as in the batch
    (alone,) = m.generate(PROMPTS[1:2], passages=PASSAGES[1:2], max_new_tokens=6)
    assert alone.token_ids == want[1].token_ids


def test_changed_weights_or_precision_miss_the_cache(tok):
    m = make(tok)
    m.passage_cache = PassageKVCache()
    read = m.tokenize_passages(PASSAGES[:1])
    m._encode_read_passages(read)
    with torch.no_grad():  # an in-place write, as an optimiser step does
        m.layers[2].self_attn.v_proj.weight.mul_(1.5)
    got, valid = m._encode_read_passages(read)
    want, _ = m.encode_passages(read)
    assert_close(got[2][1][:, :, valid[0]], want[2][1][:, :, valid[0]])
    m.decode_precision = "bf16"
    with m._decode_autocast():
        m._encode_read_passages(read)
    assert m.passage_cache.hits == 0 and len(m.passage_cache) == 6


def test_the_cache_keeps_at_most_max_bytes_and_the_latest_entries(tok):
    m = make(tok)
    m.passage_cache = PassageKVCache()
    # each cut to l_max=12 tokens: entries of one size
    texts = [f"{city} is a city on a river in the north of a country far away." for city in "ABC"]
    m._encode_read_passages(m.tokenize_passages([texts[:1]]))
    one = m.passage_cache.bytes
    m.passage_cache = cache = PassageKVCache(max_bytes=2 * one)
    for text in texts:
        m._encode_read_passages(m.tokenize_passages([[text]]))
    assert len(cache) == 2 and cache.bytes <= 2 * one
    m._encode_read_passages(m.tokenize_passages([[texts[0]]]))  # evicted first: computed again
    m._encode_read_passages(m.tokenize_passages([[texts[2]]]))  # still held
    assert (cache.misses, cache.hits) == (4, 1)


def test_the_concatenating_reader_never_uses_the_cache(tok):
    m = make(tok, reader="concat")
    m.passage_cache = PassageKVCache()
    want = make(tok, reader="concat").generate(PROMPTS, passages=PASSAGES, max_new_tokens=4)
    got = m.generate(PROMPTS, passages=PASSAGES, max_new_tokens=4)
    assert [g.token_ids for g in got] == [w.token_ids for w in want] and len(m.passage_cache) == 0
