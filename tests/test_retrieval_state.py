"""Reference tests for the retrieval-state options (pooling, similarity, calibration) and the cached warmup:
every vector path against an independent computation from hooks on a plain HF forward."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from imprag.errors import UserError
from imprag.model.calibration import FREE, Calibration, calibration_prompts, template_key
from imprag.model.config import PAPER_RETRIEVAL, ImpRAGConfig
from imprag.model.imprag import ImpRAG
from imprag.model.tiny import build_tokenizer, tiny_model
from imprag.train.losses import multi_label_nce
from imprag.train.retrieval_cache import (
    CachedData,
    RetrievalHead,
    build_cache,
    calibrated_scores,
    check_cacheable,
    pooled_inputs,
    train_cached,
)

PROMPTS = ["Q: who wrote the book? A:", "Is this statement true? 0 1 2 A:", "free text the river"]
PASSAGES = [
    "Paris is a city on the Seine.",
    "Berlin is the capital of Germany.",
    "The author wrote the book.",
    "0 1 2 3 4",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def make(arch, tok, **cfg) -> ImpRAG:
    base = dict(b=2, t=4, k=3, l_max=12, pooling="mean", similarity="dot", calibration="none")
    base.update(cfg)
    return ImpRAG(tiny_model(arch, tok), tok, ImpRAGConfig(**base))


def hooked_token_states(m: ImpRAG, texts: list[str], proj: str) -> list[torch.Tensor]:
    """Per text: layer b's q_proj/k_proj output for every token (T, out) from a plain HF forward."""
    captured = []
    attn = m.layers[m.config.b].self_attn
    handle = getattr(attn, proj).register_forward_hook(lambda mod, i, o: captured.append(o[0].detach()))
    try:
        with torch.no_grad():
            for text in texts:
                m.lm(input_ids=torch.tensor(m._tokenize([text])))
    finally:
        handle.remove()
    return captured


def reference_mean(m: ImpRAG, texts: list[str], kind: str) -> torch.Tensor:
    """Mean over tokens 1..T-1 (the first dropped) of the per-token state, queries group-averaged."""
    attn = m.layers[m.config.b].self_attn
    out = []
    for states in hooked_token_states(m, texts, "q_proj" if kind == "q" else "k_proj"):
        heads = m.num_heads if kind == "q" else m.num_kv_heads
        s = states.view(states.shape[0], heads, m.head_dim)
        norm = getattr(attn, "q_norm" if kind == "q" else "k_norm", None)
        if norm is not None:
            s = norm(s)
        if kind == "q":
            g = m.num_heads // m.num_kv_heads
            s = torch.stack(
                [s[:, [j for j in range(heads) if j // g == kv]].mean(1) for kv in range(m.num_kv_heads)], 1
            )
        s = s.reshape(s.shape[0], -1)
        out.append(s[1:].mean(0) if s.shape[0] > 1 else s[0])
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_pooled_vectors_equal_hooked_projections(arch, side, tok):
    m = make(arch, tok)
    ids, mask = m.encode_prompts(PROMPTS, side=side)
    with torch.no_grad():
        assert_close(m.query_vectors(ids, mask), reference_mean(m, PROMPTS, "q"), rtol=1e-5, atol=1e-6)
    assert_close(m.embed_queries(PROMPTS), reference_mean(m, PROMPTS, "q"), rtol=1e-5, atol=1e-6)
    assert_close(
        m.embed_passages(PASSAGES, batch_size=3), reference_mean(m, PASSAGES, "k"), rtol=1e-5, atol=1e-6
    )


def content_reference(m: ImpRAG, prompts: list[str], slots: list[list[str]]) -> torch.Tensor:
    """Mean query state over the tokens that overlap the slot values (found with str.find), per prompt."""
    out = []
    for prompt, values, states in zip(prompts, slots, hooked_token_states(m, prompts, "q_proj")):
        offsets = m.tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
        spans = [(prompt.find(v), prompt.find(v) + len(v)) for v in values]
        keep = [i for i, (a, b) in enumerate(offsets) if any(a < e and b > s for s, e in spans)]
        g = m.num_heads // m.num_kv_heads
        s = states.view(states.shape[0], m.num_kv_heads, g, m.head_dim).mean(2).reshape(states.shape[0], -1)
        out.append(s[keep].mean(0))
    return torch.stack(out)


def test_content_pooling_averages_the_template_slots(tok):
    from imprag.data.tasks import apply_template
    from imprag.train.collate import Collator

    m = make("llama", tok, pooling="content")
    prompts = [
        apply_template("trex", "Paris [SEP] country"),
        apply_template("nq", "who wrote it?"),
        "the river flows",
    ]
    slots = [["Paris", "country"], ["who wrote it?"], ["the river flows"]]
    assert_close(m.embed_queries(prompts), content_reference(m, prompts, slots), rtol=1e-5, atol=1e-6)
    # passages pool every token but the first, as "mean" does
    assert_close(m.embed_passages(PASSAGES), reference_mean(m, PASSAGES, "k"), rtol=1e-5, atol=1e-6)
    # the training collator marks the same tokens
    batch = Collator(m.tokenizer, 64, 8, 8).sequences(prompts, ["x", "y", "z"])
    _, mask, content = m.encode_queries(prompts)
    assert batch.query_content is not None and content is not None
    for i in range(3):
        n = int(mask[i].sum())
        assert batch.query_content[i, :n].tolist() == content[i][mask[i].bool()].tolist()
        assert 0 < int(content[i].sum()) < n or i == 2


@pytest.mark.parametrize("pooling", ["mean", "content", "last"])
def test_training_forward_pools_the_prompt_tokens_only(pooling, tok):
    """forward(query_index=...) over prompt + response pools the prompt's tokens, as embed_queries does."""
    from imprag.data.tasks import apply_template
    from imprag.train.collate import Collator

    m = make("llama", tok, calibration="template", similarity="cosine", pooling=pooling)
    m.calibrate(PASSAGES)
    prompts = [apply_template("nq", "who wrote the book?"), apply_template("trex", "Paris [SEP] country")]
    batch = Collator(m.tokenizer, 64, 8, 8).sequences(prompts, [" the author", " France"])
    keys = [template_key(p) for p in prompts]
    out = m.forward(
        batch.input_ids,
        batch.attention_mask,
        query_index=batch.query_index,
        query_keys=keys,
        query_content=batch.query_content,
    )
    assert_close(out.query_vectors, m.embed_queries(prompts), rtol=1e-5, atol=1e-5)


def test_cosine_and_calibration_are_the_final_search_vectors(tok):
    m = make("llama", tok, similarity="cosine", temperature=0.1, calibration="template")
    with pytest.raises(UserError, match="imprag calibrate"):
        m.embed_queries(PROMPTS)
    cal = m.calibrate(PASSAGES, seed=1)
    raw_q = reference_mean(m, PROMPTS, "q")
    raw_p = reference_mean(m, PASSAGES, "k")
    # the means: passages over the sample, each format over its prompts
    assert_close(cal.passage, raw_p.mean(0), rtol=1e-5, atol=1e-6)
    fever = calibration_prompts(PASSAGES, seed=1)["fever"]
    assert_close(cal.query["fever"], reference_mean(m, fever, "q").mean(0), rtol=1e-4, atol=1e-5)
    keys = [template_key(p) for p in PROMPTS]
    assert keys == ["qa", "fever", FREE]
    q = torch.stack([raw_q[i] - cal.query[k] for i, k in enumerate(keys)])
    q = q / q.norm(dim=-1, keepdim=True) / 0.1
    p = raw_p - cal.passage
    p = p / p.norm(dim=-1, keepdim=True)
    Q, P = m.embed_queries(PROMPTS), m.embed_passages(PASSAGES)
    assert_close(Q, q, rtol=1e-4, atol=1e-4)
    assert_close(P, p, rtol=1e-4, atol=1e-5)
    # FAISS inner product == the model's score
    from imprag.index.faiss_build import import_faiss

    faiss = import_faiss()
    fi = faiss.IndexFlatIP(P.shape[1])
    fi.add(P.numpy())
    scores, rows = fi.search(Q.numpy(), len(PASSAGES))
    expected = (q @ p.T).sort(dim=-1, descending=True)
    assert_close(torch.from_numpy(scores), expected.values, rtol=1e-4, atol=1e-4)
    # "mean" calibration uses the free-form mean for every prompt
    m.config.calibration = "mean"
    q_mean = raw_q - cal.query[FREE]
    assert_close(
        m.embed_queries(PROMPTS), q_mean / q_mean.norm(dim=-1, keepdim=True) / 0.1, rtol=1e-4, atol=1e-4
    )


def test_template_keys_of_every_task_format():
    from imprag.data.tasks import TASKS, apply_template

    raw = {
        "qa": "who wrote it?",
        "slot": "Paris [SEP] country",
        "fever": "Paris is in France.",
        "aida": "He met [START_ENT] Paris [END_ENT] there.",
    }
    for name in ("nq", "hotpotqa", "trex", "zsre", "fever", "aida"):
        spec = TASKS[name]
        assert template_key(apply_template(spec, raw[spec.kind])) == spec.kind
    assert template_key("Where was Elvara Montis born?") == FREE
    assert template_key("some context Q: who? A:") == "rc"  # the more specific template wins
    assert template_key("Q: who? A:") == "qa"


def test_calibration_is_saved_loaded_and_fingerprinted(tmp_path, tok):
    m = make("llama", tok, similarity="cosine", calibration="template")
    m.calibrate(PASSAGES)
    fp = m.fingerprint()
    m.save_pretrained(tmp_path / "ckpt")
    loaded = ImpRAG.from_pretrained(tmp_path / "ckpt")
    assert loaded.fingerprint() == fp
    assert_close(loaded.embed_queries(PROMPTS), m.embed_queries(PROMPTS))
    loaded.calibration = Calibration(loaded.calibration.passage + 1, loaded.calibration.query)
    assert loaded.fingerprint() != fp  # another passage mean: other index vectors
    # the paper's setting keeps the fingerprint it always had (header + bottom weights, nothing more)
    import hashlib

    paper = make("llama", tok, **PAPER_RETRIEVAL)
    h = hashlib.sha256(b"llama|b=2|state=pre_rope|l_max=12")
    for module in paper.retrieval_modules(query=False):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.float().contiguous().numpy().tobytes())
    assert paper.fingerprint() == h.hexdigest()[:16]


def test_legacy_imprag_json_means_the_papers_retrieval_state(tmp_path):
    (tmp_path / "imprag.json").write_text(
        json.dumps({"b": 1, "t": 2, "k": 2, "l_max": 8, "state": "pre_rope", "reader": "concat"})
    )
    cfg = ImpRAGConfig.load(tmp_path)
    assert (cfg.pooling, cfg.similarity, cfg.calibration) == ("last", "dot", "none")
    with pytest.raises(UserError, match="--pooling"):
        ImpRAGConfig(b=1, t=2, pooling="max").validate(4)


# ---------------------------------------------------------------- the cached warmup
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("pooling", ["content", "mean", "last"])
def test_cached_states_equal_the_models_states(arch, pooling, tok):
    m = make(arch, tok, pooling=pooling)
    check_cacheable(m)
    head = RetrievalHead(m)
    ids, mask, content = m.encode_queries(PROMPTS)
    with torch.no_grad():
        cached = head.states(pooled_inputs(m, ids, mask, "q", content=content), "q")
        assert_close(cached, m.query_states(ids, mask, content=content), rtol=1e-5, atol=1e-5)
        assert_close(
            head.states(build_cache(m, PROMPTS, "q"), "q"), m.embed_queries(PROMPTS), rtol=1e-5, atol=1e-5
        )
    u = build_cache(m, PASSAGES, "k", batch_size=2)
    with torch.no_grad():
        assert_close(head.states(u, "k"), m._embed_passage_states(PASSAGES), rtol=1e-5, atol=1e-5)


def test_cacheable_refuses_nonlinear_heads(tok):
    with pytest.raises(UserError, match="cached retrieval warmup"):
        check_cacheable(make("qwen3", tok))  # per-head q/k norm
    with pytest.raises(UserError, match="pre_rope"):
        check_cacheable(make("llama", tok, state="post_rope"))


def test_global_negative_loss_equals_hand_computed_values():
    # 2 queries, 3 passages; query 0's positives {0, 2}, query 1's {1}: every other passage is a negative
    s = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, -1.0]])
    pos = torch.tensor([[True, False, True], [False, True, False]])
    total, n = multi_label_nce(s, pos, ~pos)
    e = torch.exp
    expected = (
        -torch.log(e(s[0, 0]) / (e(s[0, 0]) + e(s[0, 1])))
        - torch.log(e(s[0, 2]) / (e(s[0, 2]) + e(s[0, 1])))
        - torch.log(e(s[1, 1]) / (e(s[1, 1]) + e(s[1, 0]) + e(s[1, 2])))
    )
    assert int(n) == 3
    assert_close(total, expected)


def test_cached_training_equals_uncached_training(tok):
    """One cached step == the same loss through the full model (query_vectors / passage_vectors over all
    passages, exact calibration means), same gradients, same updated weights."""
    prompts = ["Q: who wrote the book? A:", "Q: where is Paris? A:", "Q: what is 0 1? A:"]
    positives = [[2], [0], [3]]
    cfg = dict(similarity="cosine", temperature=0.2, calibration="template")
    a = make("llama", tok, **cfg)
    b = make("llama", tok, **cfg)
    b.lm.load_state_dict(a.lm.state_dict())
    data = CachedData(
        build_cache(a, prompts, "q"),
        [template_key(p) for p in prompts],
        positives,
        build_cache(a, PASSAGES, "k"),
    )
    train_cached(a, data, steps=1, batch_size=3, lr=1e-2, progress=False)
    # uncached: the same loss with autograd through the model's own vector paths
    head = RetrievalHead(b)
    params = head.parameters()
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    ids, mask = b.encode_prompts(prompts, side="left", with_passages=True)
    q_raw = b.query_states(ids, mask)
    pid, pmask = b._pad([b._tokenize([t])[0] for t in PASSAGES], "right")
    p_raw = b.passage_states(pid, pmask)
    b.calibration = Calibration(p_raw.mean(0), {"qa": q_raw.mean(0), FREE: q_raw.mean(0)})
    b.calibration.passage = p_raw.mean(0)  # with autograd, as the cached step computes it
    q = b.finish_vectors(q_raw, "q", ["qa"] * 3)
    p = b.finish_vectors(p_raw, "k")
    pos = torch.zeros(3, len(PASSAGES), dtype=torch.bool)
    for i, r in enumerate(positives):
        pos[i, r] = True
    total, n = multi_label_nce(q @ p.T, pos, ~pos)
    opt.zero_grad()
    (total / n).backward()
    opt.step()
    for pa, pb in zip(RetrievalHead(a).parameters(), params):
        assert_close(pa, pb, rtol=1e-4, atol=1e-6)
    # and the stored calibration is the exact mean under the new weights
    with torch.no_grad():
        _, cal = calibrated_scores(RetrievalHead(a), data, torch.arange(3), 1.0)
    assert_close(a.calibration.passage, cal.passage)


def test_cached_warmup_learns_to_retrieve(tok):
    """A toy corpus whose prompts name their passage: the cached warmup's recall@1 rises well above chance."""
    names = [f"alpha{i} beta{i}" for i in range(12)]
    passages = [f"{n} is a place with a river." for n in names]
    prompts = [f"Q: where is {n}? A:" for n in names]
    m = make("llama", tok, similarity="cosine", calibration="template")
    data = CachedData(
        build_cache(m, prompts, "q"), ["qa"] * 12, [[i] for i in range(12)], build_cache(m, passages, "k")
    )

    def recall() -> float:
        head = RetrievalHead(m)
        with torch.no_grad():
            s, _ = calibrated_scores(head, data, torch.arange(12), 1.0)
        return float((s.argmax(-1) == torch.arange(12)).float().mean())

    before = recall()
    losses = train_cached(m, data, steps=150, batch_size=12, lr=3e-2, progress=False)
    assert losses[-1] < losses[0] * 0.5
    assert recall() >= max(0.75, before + 0.3)


def test_imprag_train_with_the_cached_warmup_alone(tmp_path):
    """`imprag train` with no stages: cache, train, calibrate, save; an interrupted cache resumes from its
    finished chunks; the final model's vectors are the trained head's."""
    from test_train_support import make_corpus, make_model, small_config

    from imprag.train.loop import train

    corpus = make_corpus(tmp_path, n=24)
    model = make_model(tmp_path, corpus["texts"])
    cfg = small_config(tmp_path, corpus, model, out=str(tmp_path / "run"))
    cfg.stages, cfg.cached_warmup.steps, cfg.cached_warmup.batch_size = [], 5, 8
    cfg.cached_warmup.title_queries = 10  # label-free pseudo-queries from the passages' titles
    cfg.eval.dev = str(corpus["dev"])
    final = train(cfg)
    chunks = sorted((tmp_path / "run" / "cache").rglob("*.pt"))
    assert {c.name.split("-")[0] for c in chunks} == {"k", "q"}
    trained = ImpRAG.from_pretrained(final)
    base = ImpRAG.from_pretrained(model, b=1, t=2, k=2, l_max=24)
    assert trained.calibration is not None and "qa" in trained.calibration.query
    assert "title" not in trained.calibration.query  # a training device, not a prompt format
    changed = {n for n, p in trained.lm.named_parameters() if not torch.equal(p, base.lm.get_parameter(n))}
    assert changed == {
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
    }
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["stage"] == "cached_warmup" and "recall@1" in rows[-1]["eval"]
    # the trainer ranked the dev set with the cache's passage vectors: the same as embedding them anew
    from imprag.train.data import load_passages
    from imprag.train.evaluate import dev_recall, load_dev

    dev = load_dev(cfg.eval, load_passages(cfg.data.passages))
    assert rows[-1]["eval"] == dev_recall(trained, dev, cfg.eval.k)
    # a second run reuses every cached chunk (same files, untouched)
    stamps = {c: c.stat().st_mtime_ns for c in chunks}
    cfg.out, cfg.overwrite = str(tmp_path / "run2"), True
    cfg.cached_warmup.cache_dir = str(tmp_path / "run" / "cache")
    final2 = train(cfg)
    assert {c: c.stat().st_mtime_ns for c in chunks} == stamps
    again = ImpRAG.from_pretrained(final2)
    assert_close(again.embed_queries(PROMPTS), trained.embed_queries(PROMPTS))


def test_the_warmups_passage_vectors_build_the_index_without_embedding(tmp_path, monkeypatch):
    """After a cached warmup and a reader stage with the retrieval path frozen, final/ holds the corpus's
    index vectors: `model_encoder` serves them (no passage embedded) and they equal embedding anew. A stage
    that moves the retrieval path leaves none."""
    from test_train_support import make_corpus, make_model, small_config

    from imprag.index.encoder import model_encoder
    from imprag.index.stored_vectors import VECTORS_NAME
    from imprag.train.config import StageConfig
    from imprag.train.data import load_passages
    from imprag.train.loop import train

    corpus = make_corpus(tmp_path, n=24)
    model = make_model(tmp_path, corpus["texts"])
    cfg = small_config(tmp_path, corpus, model, out=str(tmp_path / "run"))
    cfg.cached_warmup.steps, cfg.cached_warmup.batch_size, cfg.cached_warmup.title_queries = 3, 8, 0
    read = dict(name="read", objective="lm", steps=2, lm_weight=1.0, batch_size=4, passage_grad=False)
    cfg.stages = [StageConfig(**read, freeze_retrieval=True)]
    final = train(cfg)
    assert (final / VECTORS_NAME).is_file()
    trained = ImpRAG.from_pretrained(final)
    texts = list(load_passages(cfg.data.passages).values())
    expected = trained.embed_passages(texts).numpy()
    calls: list[int] = []
    embed = trained.embed_passages
    monkeypatch.setattr(trained, "embed_passages", lambda t, **kw: calls.append(len(t)) or embed(t, **kw))
    encoder = model_encoder(trained, source=final)
    assert_close(torch.from_numpy(encoder.embed(texts)), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)
    assert calls == []
    encoder.embed([texts[0], "a passage the run never saw"])
    assert calls == [1]  # only the unknown one
    assert model_encoder(trained, max_length=7, source=final).embed(texts[:2]) is not None and calls[-1] == 2
    cfg.out, cfg.overwrite = str(tmp_path / "run2"), True
    cfg.stages = [StageConfig(**read)]
    assert not (train(cfg) / VECTORS_NAME).exists()


def test_title_queries_group_the_passages_of_a_title():
    from imprag.train.retrieval_cache import title_queries

    texts = ["Paris: a city.", "Berlin: a city.", "Paris: on the Seine.", "no title in this one"]
    got = title_queries(texts, 10)
    assert sorted(got) == [("Q: Berlin A:", [1]), ("Q: Paris A:", [0, 2])]
    assert len(title_queries(texts, 1)) == 1 and title_queries(texts, 0) == []


@pytest.mark.parametrize("pooling", ["content", "mean", "last"])
def test_every_retrieval_option_is_a_config_value(tmp_path, pooling):
    from imprag.config_io import load_config
    from imprag.train.config import TrainConfig

    f = tmp_path / "c.yaml"
    f.write_text(
        f"model:\n  path: m\n  pooling: {pooling}\n  similarity: dot\n  temperature: 0.1\n  calibration: mean\n"
        "stages: [{name: r, objective: lm, steps: 1, lm_weight: 1.0}]\n"
    )
    m = load_config(TrainConfig, f).model
    assert (m.pooling, m.similarity, m.temperature, m.calibration) == (pooling, "dot", 0.1, "mean")
