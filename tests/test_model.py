"""Reference tests for the layer-group loop, the reader, retrieval vectors and generation (tiny GQA models)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.testing import assert_close

from imprag.errors import UserError
from imprag.model.config import PAPER_RETRIEVAL, ImpRAGConfig
from imprag.model.imprag import ImpRAG
from imprag.model.layer_groups import attention_mask_4d
from imprag.model.tiny import build_tokenizer, tiny_model

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
PROMPTS = ["The capital of France is", "Q: who wrote the book? A:", "Is this statement true? 0 1 2 A:"]
PASSAGES = [
    ["Paris is a city on the Seine.", "Berlin is the capital of Germany."],
    ["The author wrote the book.", "The river flows north.", "0 1 2 3"],
    ["The quick brown fox jumps."],
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def make(arch, tok, **cfg) -> ImpRAG:
    lm = tiny_model(arch, tok)
    base = dict(
        b=2, t=4, k=3, l_max=12, **PAPER_RETRIEVAL
    )  # the paper's retrieval state (see test_retrieval_state.py)
    base.update(cfg)
    return ImpRAG(lm, tok, ImpRAGConfig(**base))


# ---------------------------------------------------------------- no passages == the plain HF model
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_forward_without_passages_equals_hf_logits(arch, side, tok):
    m = make(arch, tok)
    ids, mask = m.encode_prompts(PROMPTS, side=side)
    ref = m.lm(input_ids=ids, attention_mask=mask).logits
    out = m.forward(ids, mask).logits
    valid = mask.bool()
    assert_close(out[valid], ref[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_without_passages_equals_hf_generate(arch, tok):
    m = make(arch, tok)
    ids, mask = m.encode_prompts(PROMPTS, side="left", max_new_tokens=10)
    hf = m.lm.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id
    )[:, ids.shape[1] :].tolist()
    ours = m.generate(PROMPTS, max_new_tokens=10)
    for g, h in zip(ours, hf):
        expected = []
        for token in h:
            if token == tok.eos_token_id:
                break
            expected.append(token)
        assert g.token_ids == expected
        assert g.finish_reason == ("stop" if len(expected) < 10 else "length")


# ---------------------------------------------------------------- the reader == one slow whole-model pass
def slow_reader_logits(
    m: ImpRAG, prompt: str, passages: list[str], mode: str, q_ids: list[int] | None = None
) -> torch.Tensor:
    """Run the untouched HF model once over [passages ; prompt] (or the prompt's given token ids) with
    per-layer hand-built masks.

    Passage tokens attend causally within the passage block (one block for concat, one per passage for
    independent); the prompt attends causally to itself, and in layers b..t also to every passage token.
    """
    cfg = m.config
    p_ids = [m._truncate_passage(x, cfg.l_max) for x in m._tokenize(passages)]
    q_ids = q_ids or m._tokenize([prompt])[0]
    blocks = [sum(p_ids, [])] if mode == "concat" else p_ids
    P = sum(len(x) for x in blocks)
    T = len(q_ids)
    ids = torch.tensor([[t for blk in blocks for t in blk] + q_ids])
    positions = [i for blk in blocks for i in range(len(blk))] + [cfg.k * cfg.l_max + i for i in range(T)]
    allowed_other = torch.zeros(P + T, P + T, dtype=torch.bool)
    start = 0
    for blk in blocks:
        n = len(blk)
        allowed_other[start : start + n, start : start + n] = torch.ones(n, n).tril().bool()
        start += n
    allowed_other[P:, P:] = torch.ones(T, T).tril().bool()
    allowed_mid = allowed_other.clone()
    allowed_mid[P:, :P] = True

    def to_mask(allowed):
        mask = torch.zeros(1, 1, P + T, P + T)
        return mask.masked_fill(~allowed, torch.finfo(torch.float32).min)

    handles = []
    for i, layer in enumerate(m.layers):
        mask = to_mask(allowed_mid if cfg.b <= i <= cfg.t else allowed_other)

        def hook(module, args, kwargs, mask=mask):
            kwargs["attention_mask"] = mask
            return args, kwargs

        handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        logits = m.lm(input_ids=ids, position_ids=torch.tensor([positions])).logits
    finally:
        for h in handles:
            h.remove()
    return logits[0, P:]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["concat", "independent"])
def test_reader_equals_slow_whole_model_reference(arch, mode, tok):
    m = make(arch, tok, reader=mode)
    # batched (left-padded prompts, padded passages) must equal each example run alone through the reference
    ids, mask = m.encode_prompts(PROMPTS, side="left", with_passages=True)
    out = m.forward(ids, mask, passages=m.tokenize_passages(PASSAGES)).logits
    for i, (prompt, passages) in enumerate(zip(PROMPTS, PASSAGES)):
        ref = slow_reader_logits(m, prompt, passages, mode)
        assert_close(out[i, mask[i].bool()], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["concat", "independent", None])
def test_continuation_logprob_equals_the_slow_reference(mode, tok):
    """log p(continuation | passages, prompt): the continuation's tokens scored by one whole-model pass."""
    m = make("llama", tok, reader=mode or "concat")
    conts = [" Paris", " the author of it", " 3"]
    got = m.continuation_logprob(PROMPTS, conts, None if mode is None else PASSAGES)
    assert got.shape == (3,) and got.dtype == torch.float32
    for i, (prompt, cont) in enumerate(zip(PROMPTS, conts)):
        tail = tok(cont, add_special_tokens=False)["input_ids"]
        q = m._tokenize([prompt])[0] + tail
        if mode is None:
            logits = m.lm(input_ids=torch.tensor([q])).logits[0]
        else:
            logits = slow_reader_logits(m, prompt, PASSAGES[i], mode, q_ids=q)
        logp = logits.log_softmax(-1)
        ref = sum(logp[len(q) - len(tail) - 1 + j, t] for j, t in enumerate(tail))
        assert_close(got[i], ref, rtol=1e-4, atol=1e-4)
    assert m.continuation_logprob(PROMPTS[:1], [""]).tolist() == [0.0]


def test_passages_change_only_layers_from_b(tok):
    """Bottom layers never see passages: the query vector taken inside the reader equals embed_queries."""
    m = make("llama", tok)
    ids, mask = m.encode_prompts(PROMPTS, side="left", with_passages=True)
    last = torch.full((len(PROMPTS),), ids.shape[1] - 1)
    out = m.forward(ids, mask, passages=m.tokenize_passages(PASSAGES), query_index=last)
    assert_close(out.query_vectors, m.embed_queries(PROMPTS), rtol=1e-5, atol=1e-6)
    plain = m.forward(ids, mask).logits
    assert not torch.allclose(out.logits, plain, atol=1e-4)  # ... and the middle layers do read them


@pytest.mark.parametrize("mode", ["concat", "independent"])
def test_cached_generation_equals_recomputing_each_step(mode, tok):
    m = make("qwen3", tok, reader=mode)
    gens = m.generate(PROMPTS, passages=PASSAGES, max_new_tokens=6)
    for prompt, passages, g in zip(PROMPTS, PASSAGES, gens):
        ids = m._tokenize([prompt])[0]
        produced = []
        for _ in range(len(g.token_ids) + (g.finish_reason == "stop")):
            x = torch.tensor([ids + produced])
            logits = m.forward(x, torch.ones_like(x), passages=m.tokenize_passages([passages])).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            produced.append(nxt)
        assert produced == g.token_ids


# ---------------------------------------------------------------- retrieval vectors == hooks on layer b
def hooked_states(m: ImpRAG, texts: list[str], proj: str) -> list[torch.Tensor]:
    """Run the plain HF model on each text alone; capture layer b's projection output at the last token."""
    captured = []
    attn = m.layers[m.config.b].self_attn
    handle = getattr(attn, proj).register_forward_hook(lambda mod, i, o: captured.append(o[0, -1].detach()))
    try:
        for text in texts:
            m.lm(input_ids=torch.tensor(m._tokenize([text])))
    finally:
        handle.remove()
    return captured


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_query_vectors_equal_hooked_q_proj_group_average(arch, side, tok):
    m = make(arch, tok)
    d, hq, hk = m.head_dim, m.num_heads, m.num_kv_heads
    g = hq // hk
    attn = m.layers[m.config.b].self_attn
    expected = []
    for q in hooked_states(m, PROMPTS, "q_proj"):
        heads = q.view(hq, d)
        if hasattr(attn, "q_norm"):
            heads = attn.q_norm(heads)
        groups = []
        for kv in range(hk):  # explicit loop: query head j belongs to key head j // g
            members = [heads[j] for j in range(hq) if j // g == kv]
            groups.append(torch.stack(members).mean(0))
        expected.append(torch.cat(groups))
    ids, mask = m.encode_prompts(PROMPTS, side=side)
    with torch.no_grad():
        got = m.query_vectors(ids, mask)
    assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert_close(m.embed_queries(PROMPTS), torch.stack(expected), rtol=1e-5, atol=1e-6)
    # the rest of the batch does not change a vector
    assert_close(m.embed_queries(PROMPTS[1:2]), torch.stack(expected)[1:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_passage_vectors_equal_hooked_k_proj(arch, tok):
    m = make(arch, tok)
    texts = [p for ps in PASSAGES for p in ps]
    attn = m.layers[m.config.b].self_attn
    expected = []
    for k in hooked_states(m, texts, "k_proj"):
        heads = k.view(m.num_kv_heads, m.head_dim)
        if hasattr(attn, "k_norm"):
            heads = attn.k_norm(heads)
        expected.append(heads.reshape(-1))
    got = m.embed_passages(texts, batch_size=3)
    assert got.shape == (len(texts), m.dim)
    assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert_close(m.embed_passages(texts[2:3]), got[2:3], rtol=1e-5, atol=1e-6)


def rotate(x, cos, sin):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def test_post_rope_vectors_apply_rotation_at_their_positions(tok):
    pre = make("llama", tok)
    post = ImpRAG(pre.lm, tok, ImpRAGConfig(b=2, t=4, k=3, l_max=12, state="post_rope", **PAPER_RETRIEVAL))
    text = PROMPTS[0]
    n = len(pre._tokenize([text])[0])
    d = pre.head_dim
    rot = pre.lm.model.rotary_emb
    # passage key: position n-1 (passages start at 0); query: position k*l_max + n-1
    for vec_pre, vec_post, pos in [
        (pre.embed_passages([text]), post.embed_passages([text]), n - 1),
        (pre.embed_queries([text]), post.embed_queries([text]), 3 * 12 + n - 1),
    ]:
        cos, sin = rot(torch.zeros(1, 1, d), torch.tensor([[pos]]))
        expected = rotate(vec_pre.view(-1, d), cos[0], sin[0]).reshape(1, -1)
        assert_close(vec_post, expected, rtol=1e-5, atol=1e-6)


def test_embed_passages_runs_only_the_bottom_layers(tok):
    m = make("llama", tok, b=2, t=4)
    calls = {i: 0 for i in range(m.num_layers)}
    parts = {"k_proj": 0, "q_proj": 0, "v_proj": 0, "input_layernorm": 0}
    hooks = [
        layer.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls[n] + 1))
        for n, layer in enumerate(m.layers)
    ]
    layer_b = m.layers[2]
    for name in parts:
        mod = layer_b.input_layernorm if name == "input_layernorm" else getattr(layer_b.self_attn, name)
        hooks.append(
            mod.register_forward_hook(lambda mod, i, o, name=name: parts.__setitem__(name, parts[name] + 1))
        )
    try:
        m.embed_passages(["a passage", "another one"])
    finally:
        for h in hooks:
            h.remove()
    assert calls == {0: 1, 1: 1, 2: 0, 3: 0, 4: 0, 5: 0}
    assert parts == {"k_proj": 1, "q_proj": 0, "v_proj": 0, "input_layernorm": 1}


# ---------------------------------------------------------------- generation options
def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(tok):
    m = make("llama", tok)
    greedy = m.generate(PROMPTS, max_new_tokens=5)
    nucleus = m.generate(
        PROMPTS, max_new_tokens=5, do_sample=True, top_p=1e-6, generator=torch.Generator().manual_seed(0)
    )
    assert [g.token_ids for g in greedy] == [g.token_ids for g in nucleus]
    a = m.generate(
        PROMPTS, max_new_tokens=5, do_sample=True, temperature=2.0, generator=torch.Generator().manual_seed(1)
    )
    b = m.generate(
        PROMPTS, max_new_tokens=5, do_sample=True, temperature=2.0, generator=torch.Generator().manual_seed(1)
    )
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_stop_strings_cut_the_text(tok):
    m = make("llama", tok)
    full = m.generate(PROMPTS[:1], max_new_tokens=8)[0]
    assert len(full.text) > 2
    stop = full.text[2:4]
    cut = m.generate(PROMPTS[:1], max_new_tokens=8, stop=[stop])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


def test_stream_yields_growing_text(tok):
    m = make("llama", tok)
    states = [[g.text for g in step] for step in m.generate_stream(PROMPTS[:2], max_new_tokens=4)]
    assert 1 <= len(states) <= 4
    final = m.generate(PROMPTS[:2], max_new_tokens=4)
    assert states[-1] == [g.text for g in final]


# ---------------------------------------------------------------- configuration, loading, bad input
def test_layer_boundaries_are_validated(tok):
    lm = tiny_model("llama", tok)
    for b, t in [(4, 4), (-1, 2), (2, 6)]:
        with pytest.raises(UserError, match="--b .* --t"):
            ImpRAG(lm, tok, ImpRAGConfig(b=b, t=t))


def test_unsupported_architecture_lists_supported(tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2)
    with pytest.raises(UserError, match="supported: llama, mistral, qwen2, qwen3"):
        ImpRAG(AutoModelForCausalLM.from_config(cfg), tok, ImpRAGConfig(b=0, t=1))


def test_save_and_load_round_trip(tmp_path):
    from imprag.model.tiny import save_tiny

    # start from a saved HF folder: AutoTokenizer picks the architecture's tokenizer class on load
    m = ImpRAG.from_pretrained(
        save_tiny(tmp_path / "hf", "qwen2"), b=1, t=3, k=4, l_max=20, reader="independent"
    )
    m.calibrate([t for ps in PASSAGES for t in ps])  # the default retrieval state needs calibration means
    m.save_pretrained(tmp_path / "ckpt")
    loaded = ImpRAG.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == m.config
    assert loaded.calibration is not None and set(loaded.calibration.query) == set(m.calibration.query)
    assert loaded.fingerprint() == m.fingerprint()
    assert_close(loaded.embed_queries(PROMPTS), m.embed_queries(PROMPTS))
    assert [g.text for g in loaded.generate(PROMPTS, PASSAGES, max_new_tokens=4)] == [
        g.text for g in m.generate(PROMPTS, PASSAGES, max_new_tokens=4)
    ]
    assert ImpRAG.from_pretrained(tmp_path / "ckpt", b=0).config.b == 0


def test_from_pretrained_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ImpRAG.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load"):
        ImpRAG.from_pretrained(tmp_path / "empty")


def test_fingerprint_tracks_bottom_weights_only(tok):
    m = make("llama", tok)
    before = m.fingerprint()
    with torch.no_grad():
        m.layers[m.config.t].mlp.down_proj.weight.add_(1.0)  # above b: passage vectors unchanged
    assert m.fingerprint() == before
    with torch.no_grad():
        m.layers[0].mlp.down_proj.weight.add_(1.0)
    assert m.fingerprint() != before


def test_bad_input_behaves_as_documented(tok, caplog):
    m = make("llama", tok, l_max=4)
    assert m.generate([]) == []
    assert m.embed_queries([]).shape == (0, m.dim)
    # an empty passage or prompt is embedded as the BOS token alone
    vec = m.embed_passages(["", "x"])
    assert torch.isfinite(vec).all()
    with caplog.at_level(logging.WARNING):
        m.embed_passages(["a long passage that is far longer than four tokens"])
        m.embed_passages(["another long passage that is far longer than four tokens"])
    assert sum("l_max" in r.message for r in caplog.records) == 1  # warned once
    # a prompt longer than the window keeps its first special token and its end
    m.lm.config.max_position_embeddings = 3 * 4 + 10
    long_prompt = "word " * 50 + "A:"
    with caplog.at_level(logging.WARNING):
        ids, mask = m.encode_prompts([long_prompt], with_passages=True, max_new_tokens=2)
    assert ids.shape[1] == 8
    assert ids[0, 0] == tok.bos_token_id
    assert tok.decode(ids[0, -2:]).endswith("A:")
    assert any("truncated" in r.message for r in caplog.records)
    out = m.generate([long_prompt], passages=[["p"]], max_new_tokens=2)
    assert len(out) == 1
    with pytest.raises(UserError, match="at most k=3"):
        m.generate(["q"], passages=[["a", "b", "c", "d"]])
    with pytest.raises(UserError, match="max_new_tokens"):
        m.generate(["q"], max_new_tokens=0)


@pytest.mark.parametrize("mode", ["concat", "independent"])
def test_passage_grad_false_equals_detached_passage_states(mode, tok, monkeypatch):
    """passage_grad=False: the same logits, and the gradient of a forward whose passage key/value are
    constants (detached here by hand): the reader then learns through the prompt's side only."""
    m = make("llama", tok, reader=mode)
    ids, mask = m.encode_prompts(PROMPTS, side="left", with_passages=True)
    passages = m.tokenize_passages(PASSAGES)

    def grads(**kw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m.lm.zero_grad()
        logits = m.forward(ids, mask, passages=passages, **kw).logits
        logits[mask.bool()].logsumexp(-1).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in m.lm.named_parameters() if p.grad is not None}

    full_logits, full = grads()
    fast_logits, fast = grads(passage_grad=False)
    encode = m.encode_passages

    def detached(p):
        prefix, valid = encode(p)
        return {i: (k.detach(), v.detach()) for i, (k, v) in prefix.items()}, valid

    monkeypatch.setattr(m, "encode_passages", detached)
    ref_logits, ref = grads()
    assert_close(fast_logits, full_logits)
    assert_close(fast_logits, ref_logits)
    assert fast.keys() == ref.keys()
    for name in ref:
        assert_close(fast[name], ref[name], rtol=1e-5, atol=1e-6)
    changed = [
        n for n in full if not torch.allclose(full[n], fast.get(n, torch.zeros_like(full[n])), atol=1e-6)
    ]
    assert changed  # the passages' own path did carry gradient in the full forward


def test_bf16_decoding_runs_under_autocast_only_inside_steps(tok):
    """decode_precision bf16: the layers compute in bf16 during decoding, the caller's code between
    steps never runs under autocast, and greedy tokens mostly agree with fp32 on this tiny model."""
    m = make("llama", tok)
    fp32 = m.generate(PROMPTS, passages=PASSAGES, max_new_tokens=6)
    m.decode_precision = "bf16"
    seen: list[torch.dtype] = []
    handle = m.layers[0].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        for _ in m.generate_stream(PROMPTS, passages=PASSAGES, max_new_tokens=6):
            assert not torch.is_autocast_enabled("cpu")
        bf16 = m.generate(PROMPTS, passages=PASSAGES, max_new_tokens=6)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert m.embed_queries(PROMPTS).dtype == torch.float32
    same = sum(a == b for x, y in zip(fp32, bf16) for a, b in zip(x.token_ids, y.token_ids))
    assert same >= 0.5 * sum(len(x.token_ids) for x in fp32)


@pytest.mark.parametrize("mode", ["concat", "independent"])
def test_right_padded_passages_use_the_causal_kernel_with_the_same_states(mode, tok, monkeypatch):
    m = make("llama", tok, reader=mode)
    assert m.lm.config._attn_implementation == "sdpa"
    read = m.tokenize_passages(PASSAGES)  # passages of several lengths: right-padded rows
    assert m._self_attention_mask(read.attention_mask, torch.float32) is None
    left = m.encode_prompts(PROMPTS, "left")[1]
    assert m._self_attention_mask(left, torch.float32).shape == (3, 1, left.shape[1], left.shape[1])
    with torch.no_grad():
        fast, valid = m.encode_passages(read)
        fast_states = m.passage_states(read.input_ids, read.attention_mask)
        monkeypatch.setattr(
            ImpRAG,
            "_self_attention_mask",
            lambda self, a, d: attention_mask_4d(a.bool(), a.shape[1], None, d),
        )
        want, _ = m.encode_passages(read)
        want_states = m.passage_states(read.input_ids, read.attention_mask)
    for i in want:
        for f, w in zip(fast[i], want[i]):
            assert_close(f.transpose(1, 2)[valid], w.transpose(1, 2)[valid])
    assert_close(fast_states, want_states)
