"""Training: where the gradients go, J_gen's labels, LoRA merge, a whole two-stage run, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_train_support import loss_rows, make_corpus, make_model, small_config, write_jsonl
from torch.testing import assert_close

from imprag.errors import UserError
from imprag.model.imprag import ImpRAG
from imprag.train.collate import Collator
from imprag.train.config import SourceConfig, StageConfig
from imprag.train.data import Mixture, Slot, load_passages
from imprag.train.distributed import DistEnv
from imprag.train.loop import train
from imprag.train.losses import IGNORE, response_nll
from imprag.train.objective import TrainObjective


@pytest.fixture(autouse=True)
def one_thread():
    # the CPUs are shared: one intra-op thread is several times faster than two contending ones
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    corpus = make_corpus(root)
    model = make_model(root, corpus["texts"])
    return root, corpus, model


def objective_for(cfg, model_path):
    m = ImpRAG.from_pretrained(model_path, b=1, t=2, k=2, l_max=24)
    passages = load_passages(cfg.data.passages)
    m.calibrate(list(passages.values()))  # as the trainer does before its first step
    m.lm.train()
    collator = Collator(m.tokenizer, 64, 16, 32)
    return m, TrainObjective(m, cfg, collator, passages, DistEnv()), Mixture(cfg, passages)


def grads(m: ImpRAG) -> dict[str, float]:
    return {n: float(p.grad.abs().sum()) for n, p in m.lm.named_parameters() if p.grad is not None}


def test_retrieval_loss_reaches_layers_up_to_b_and_nothing_above(setup):
    root, corpus, model_path = setup
    cfg = small_config(root, corpus, model_path)
    m, obj, mix = objective_for(cfg, model_path)
    plan = mix.plan(1)[0]  # the NCE warmup: lm_weight 0
    slots = mix.step_batch(plan, 0)
    assert all(s.is_retrieval for s in slots)
    out = obj(slots, 0, len(slots), plan.config)
    out["loss"].backward()
    g = {n for n, v in grads(m).items() if v > 0}
    expected = {"model.embed_tokens.weight"}
    expected |= {n for n, _ in m.lm.named_parameters() if n.startswith("model.layers.0.")}
    expected |= {
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.self_attn.q_proj.weight",  # the query vectors
        "model.layers.1.self_attn.k_proj.weight",  # the passage vectors
    }
    assert g == expected
    # the loss equals the NCE value it reports, and the reader never ran
    assert_close(out["loss"], out["nce"])
    assert "lm" not in out


def test_lm_loss_reaches_the_passages_encoding(setup):
    root, corpus, model_path = setup
    cfg = small_config(root, corpus, model_path)
    cfg.stages = [StageConfig(name="gen", objective="lm", steps=1, lm_weight=1.0, batch_size=4)]
    cfg.data.retrieval_free, cfg.data.plain_text_ratio = [], 0.0
    m, obj, mix = objective_for(cfg, model_path)
    plan = mix.plan(1)[0]
    slots = mix.step_batch(plan, 0)
    embedded: list[torch.Tensor] = []

    def keep(module, args, output):
        output.retain_grad()
        embedded.append(output)

    handle = m.lm.model.embed_tokens.register_forward_hook(keep)
    try:
        out = obj(slots, 0, len(slots), plan.config)
    finally:
        handle.remove()
    out["loss"].backward()
    passages_in, prompts_in = embedded  # encode_passages embeds the passages first, then the prompt+response
    assert passages_in.shape[1] > prompts_in.shape[1] // 2
    assert passages_in.grad is not None and passages_in.grad.abs().sum() > 0
    # the passages' key/value reach the loss through the middle layers: layers above t train too
    g = grads(m)
    assert g["model.layers.3.mlp.down_proj.weight"] > 0 and g["model.layers.2.self_attn.v_proj.weight"] > 0


def test_distill_objective_and_gradient_checkpointing_agree(setup):
    root, corpus, model_path = setup
    cfg = small_config(root, corpus, model_path)
    results = []
    for ckpt in (False, True):
        m, obj, mix = objective_for(cfg, model_path)
        m.gradient_checkpointing = ckpt
        plan = mix.plan(1)[1]  # self-distillation + J_gen over the three groups
        slots = mix.step_batch(plan, plan.start)
        assert {s.group for s in slots} == {"retrieval", "retrieval_free", "plain_text"}
        out = obj(slots, 0, len(slots), plan.config)
        out["loss"].backward()
        results.append((out, grads(m)))
    (a, ga), (b, gb) = results
    for k in ("loss", "lm", "distill"):
        assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert ga[n] == pytest.approx(gb[n], rel=1e-4, abs=1e-6)
    assert a["distill"] > 0 and a["lm"] > 0


def test_collated_labels_are_the_response_tokens_only(setup):
    root, corpus, model_path = setup
    m = ImpRAG.from_pretrained(model_path)
    tok = m.tokenizer
    c = Collator(tok, 64, 16, 32)
    batch = c.sequences(
        ["Q: Where does Ala live? A:", "a plain passage text"],
        ["Paris", "a plain passage text"],
        [False, True],
    )
    prompt = tok("Q: Where does Ala live? A:")["input_ids"]
    answer = tok(" Paris", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = batch.labels[0][batch.attention_mask[0].bool()].tolist()
    assert row == [IGNORE] * len(prompt) + answer
    assert batch.input_ids[0, : len(prompt) + len(answer)].tolist() == prompt + answer
    assert int(batch.query_index[0]) == len(prompt) - 1
    plain = batch.labels[1][batch.attention_mask[1].bool()].tolist()
    text = tok("a plain passage text", add_special_tokens=False)["input_ids"]
    assert plain == [IGNORE] * (len(plain) - len(text)) + text  # only the BOS is not a target


def test_training_cuts_a_long_prompt_as_inference_does(setup):
    root, corpus, model_path = setup
    m = ImpRAG.from_pretrained(model_path)
    tok = m.tokenizer
    prompt = "Q: " + " ".join(f"word{i}" for i in range(40)) + " where? A:"
    ids = tok(prompt)["input_ids"]
    limit = len(ids) - 7
    c = Collator(tok, limit, 16, 32)
    (cut,) = c.prompt_ids([prompt])
    assert cut == m._truncate_prompt(ids, limit)
    assert len(cut) == limit and cut[-5:] == ids[-5:]  # the end (the query's last token) is kept
    if tok.bos_token_id is not None and ids[0] == tok.bos_token_id:
        assert cut[0] == ids[0] and cut[1:] == ids[len(ids) - limit + 1 :]
    else:
        assert cut == ids[len(ids) - limit :]
    # the prompt-only rows are the same cut, right-padded with the model's pad id
    short = "Q: where? A:"
    rows, mask, _ = c.prompts([prompt, short])
    assert rows[0].tolist() == cut and int(mask[1].sum()) == len(tok(short)["input_ids"])
    n = int(mask[1].sum())
    assert rows[1, n:].tolist() == [c.pad_id] * (limit - n)
    left, left_mask = m._pad([[5, 6], [7]], "left")
    assert left.tolist() == [[5, 6], [c.pad_id, 7]] and left_mask.tolist() == [[1, 1], [0, 1]]


def test_lora_merge_keeps_retrieval_and_reader_outputs(setup, tmp_path):
    from imprag.train.config import LoRAConfig
    from imprag.train.lora import apply_lora, merged_state_dict

    root, corpus, model_path = setup
    m = ImpRAG.from_pretrained(model_path, b=1, t=2, k=2, l_max=24)
    m.calibrate(corpus["texts"])  # fixed means: the vectors below differ only through the weights
    apply_lora(m, LoRAConfig(enabled=True, r=4, alpha=8))
    assert m.layers[1] is m.lm.model.layers[1]  # ImpRAG still finds its layers
    assert not m.lm.model.embed_tokens.weight.requires_grad
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero: give the adapters an effect
        for n, p in m.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    prompts, passages = ["Q: Where does Ala live? A:"], [["Alamar Ala is a painter."]]
    q = m.embed_queries(prompts)
    ids, mask = m.encode_prompts(prompts, with_passages=True)
    logits = m.forward(ids, mask, passages=m.tokenize_passages(passages)).logits
    sd = merged_state_dict(m)
    assert not any("lora" in k or "base_layer" in k for k in sd)
    base = ImpRAG.from_pretrained(model_path, b=1, t=2, k=2, l_max=24)
    base.calibration = m.calibration
    assert not torch.allclose(base.embed_queries(prompts), q, atol=1e-4)
    base.lm.load_state_dict(sd)
    assert_close(base.embed_queries(prompts), q, rtol=1e-4, atol=1e-5)
    assert_close(
        base.forward(ids, mask, passages=base.tokenize_passages(passages)).logits,
        logits,
        rtol=1e-4,
        atol=1e-4,
    )


def test_two_stage_run_writes_metrics_checkpoints_and_a_loadable_final_model(setup):
    root, corpus, model_path = setup
    out = root / "run"
    cfg = small_config(
        root,
        corpus,
        model_path,
        out=str(out),
        save_every=1,
        keep_checkpoints=2,
        **{"eval.dev": str(corpus["dev"]), "eval.every": 2},
    )
    final = train(cfg)
    assert final == out / "final"
    rows = loss_rows(out)
    assert [(r["step"], r["stage"]) for r in rows] == [
        (1, "warmup"),
        (2, "warmup"),
        (3, "distill"),
        (4, "distill"),
    ]
    for r in rows:
        assert {"loss", "lr", "tokens", "elapsed", "tokens_per_s"} <= r.keys()
    assert "nce" in rows[0] and "lm" not in rows[0]
    assert {"lm", "distill"} <= rows[2].keys()
    assert rows[2]["loss"] == pytest.approx(rows[2]["lm"] + rows[2]["distill"])
    assert [r["tokens"] for r in rows] == sorted(r["tokens"] for r in rows)
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[-1]["lr"] < rows[0]["lr"]  # warmup 1, linear decay
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [2, 4] and "recall@5" in evals[0]["eval"]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000002", "step-00000003"]  # every step, the oldest dropped, none at the end
    assert not list(out.glob(".*tmp*")) and not list((out / "checkpoints").glob(".*"))
    loaded = ImpRAG.from_pretrained(final)
    assert (loaded.config.b, loaded.config.t, loaded.config.k, loaded.config.l_max) == (1, 2, 2, 24)
    assert loaded.generate(["Q: Where does Ala live? A:"], [["some passage"]], max_new_tokens=2)
    # starting again over a finished run is refused without --resume / --overwrite
    with pytest.raises(UserError, match="--resume"):
        train(cfg)


def test_lora_run_saves_merged_weights(setup):
    root, corpus, model_path = setup
    out = root / "lora"
    cfg = small_config(
        root, corpus, model_path, out=str(out), **{"lora.enabled": True, "lora.r": 4, "optim.lr": 1e-2}
    )
    cfg.stages = cfg.stages[:1]
    final = train(cfg)
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        q1 = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
        v3 = f.get_tensor("model.layers.3.self_attn.v_proj.weight")
    assert not any("lora" in k or "base_layer" in k for k in keys)
    with safe_open(str(model_path / "model.safetensors"), "pt") as f:
        assert not torch.allclose(f.get_tensor("model.layers.1.self_attn.q_proj.weight"), q1)  # trained
        assert torch.equal(f.get_tensor("model.layers.3.self_attn.v_proj.weight"), v3)  # above b: untouched
    ImpRAG.from_pretrained(final).embed_queries(["Q: x A:"])


# ---------------------------------------------------------------- bad input: one clear line each
def one_line_error(cfg) -> str:
    with pytest.raises(UserError) as e:
        train(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_task_files_are_one_line_errors(setup, tmp_path):
    root, corpus, model_path = setup
    good = [json.loads(x) for x in Path(corpus["mined"]).read_text().splitlines()]

    bad = write_jsonl(tmp_path / "mined.jsonl", [good[0], good[1], "{not json", good[2]])
    msg = one_line_error(
        small_config(root, corpus, model_path, **{"data.retrieval": [SourceConfig(path=str(bad))]})
    )
    assert msg.startswith(f"{bad}:3: not valid JSON") and "--data.on_error skip" in msg

    bad = write_jsonl(tmp_path / "task.jsonl", [good[0], {**good[1], "task": "nqq"}])
    msg = one_line_error(
        small_config(root, corpus, model_path, **{"data.retrieval": [SourceConfig(path=str(bad))]})
    )
    assert msg.startswith(f"{bad}:2: unknown task 'nqq'")

    bad = write_jsonl(tmp_path / "noans.jsonl", [good[0], {**good[1], "answers": []}])
    msg = one_line_error(
        small_config(root, corpus, model_path, **{"data.retrieval": [SourceConfig(path=str(bad))]})
    )
    assert msg.startswith(f"{bad}:2: example has no gold answers")

    bad = write_jsonl(tmp_path / "other.jsonl", [{**good[0], "candidates": ["p000", "zzz"]}])
    msg = one_line_error(
        small_config(root, corpus, model_path, **{"data.retrieval": [SourceConfig(path=str(bad))]})
    )
    assert msg.startswith(f"{bad}:1: candidate 'zzz' is not in --data.passages")

    rc = write_jsonl(
        tmp_path / "rc.jsonl",
        [{"input": {"context": "c", "question": "q"}, "output": [{"answer": "a"}]}, "[1, 2"],
    )
    msg = one_line_error(
        small_config(
            root, corpus, model_path, **{"data.retrieval_free": [SourceConfig(path=str(rc), task="rc")]}
        )
    )
    assert msg.startswith(f"{rc}:2: not valid JSON")

    rc = write_jsonl(tmp_path / "rc2.jsonl", [{"input": {"context": "c", "question": "q"}, "output": [{"answer": "a"}]},
                                              {"input": {"context": "c", "question": "q"}, "output": []}])  # fmt: skip
    msg = one_line_error(
        small_config(
            root, corpus, model_path, **{"data.retrieval_free": [SourceConfig(path=str(rc), task="rc")]}
        )
    )
    assert msg.startswith(f"{rc}:2: example") and "no gold answers" in msg

    msg = one_line_error(
        small_config(
            root,
            corpus,
            model_path,
            **{"data.retrieval_free": [SourceConfig(path=str(rc), task="summarise")]},
        )
    )
    assert msg.startswith("--data.retrieval_free.0.task: unknown task 'summarise'")

    msg = one_line_error(
        small_config(
            root, corpus, model_path, **{"data.retrieval_free": [SourceConfig(path=str(rc), task="nq")]}
        )
    )
    assert "needs retrieval" in msg and "data.retrieval" in msg


def test_skip_mode_drops_bad_lines(setup, tmp_path):
    root, corpus, model_path = setup
    good = [json.loads(x) for x in Path(corpus["mined"]).read_text().splitlines()]
    bad = write_jsonl(tmp_path / "mined.jsonl", [good[0], "{oops", {**good[1], "answers": []}, good[2]])
    cfg = small_config(
        root, corpus, model_path, **{"data.retrieval": [SourceConfig(path=str(bad))], "data.on_error": "skip"}
    )
    mix = Mixture(cfg, load_passages(cfg.data.passages))
    assert [ex.id for ex in mix.retrieval[0]] == ["q0", "q2"]


def test_mixture_stages_ratios_negatives_and_determinism(setup):
    root, corpus, model_path = setup
    cfg = small_config(root, corpus, model_path)
    cfg.stages = [
        StageConfig(name="warmup", objective="nce", epochs=2, lm_weight=0.0, batch_size=8),
        StageConfig(name="joint", objective="distill", steps=3, lm_weight=1.0, batch_size=8),
    ]
    cfg.data.negative_ranks, cfg.data.hard_negatives = [10, 20], 3
    mix = Mixture(cfg, load_passages(cfg.data.passages))
    warm, joint = mix.plan(world_size=2)
    assert (warm.start, warm.steps) == (0, 10)  # 2 epochs of 40 retrieval examples at 8 per step
    assert warm.counts == {
        "retrieval": 8,
        "retrieval_free": 0,
        "plain_text": 0,
    }  # lm_weight 0: retrieval only
    assert joint.start == 10 and joint.counts == {"retrieval": 4, "retrieval_free": 2, "plain_text": 2}
    # one epoch sees every retrieval example once; the second epoch another order
    seen = [s.example.id for step in range(5) for s in mix.step_batch(warm, step)]
    assert sorted(seen) == sorted(f"q{i}" for i in range(40))
    second = [s.example.id for step in range(5, 10) for s in mix.step_batch(warm, step)]
    assert sorted(second) == sorted(seen) and second != seen
    # the data position continues across the stage boundary, and a step's batch is a pure function of it
    again = Mixture(cfg, load_passages(cfg.data.passages))
    for step in (0, 7, 11):
        plan = warm if step < 10 else joint
        a, b = mix.step_batch(plan, step), again.step_batch(plan, step)
        assert [(s.example.id, s.negatives) for s in a] == [(s.example.id, s.negatives) for s in b]
    for s in mix.step_batch(warm, 3):
        ex = s.example
        assert len(s.negatives) == 3 and set(s.negatives) <= set(ex.candidates[9:20])
        assert not set(s.negatives) & (set(ex.candidates[:2]) | set(ex.gold))
    with pytest.raises(UserError, match="divisible by grad_accum"):
        mix.plan(world_size=3)
    # a stage may set its own shares (here: retrieval-free examples alone)
    cfg.stages.append(
        StageConfig(
            name="free",
            objective="lm",
            steps=2,
            lm_weight=1.0,
            batch_size=8,
            retrieval_ratio=0.0,
            retrieval_free_ratio=1.0,
            plain_text_ratio=0.0,
        )
    )
    free = Mixture(cfg, load_passages(cfg.data.passages)).plan(world_size=1)[2]
    assert free.counts == {"retrieval": 0, "retrieval_free": 8, "plain_text": 0}
    cfg.stages[2].plain_text_ratio = -1.0
    with pytest.raises(UserError, match="stages.2.plain_text_ratio must be >= 0"):
        cfg.validate()


def test_finished_run_resume_is_a_no_op_and_a_task_file_can_be_the_dev_set(setup, tmp_path):
    from imprag.train.evaluate import load_dev

    root, corpus, model_path = setup
    cfg = small_config(root, corpus, model_path, out=str(tmp_path / "run"))
    cfg.stages = cfg.stages[:1]
    final = train(cfg)
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    cfg.resume = True
    assert train(cfg) == final and (final / "model.safetensors").stat().st_mtime_ns == stamp
    cfg.resume = False
    with pytest.raises(UserError, match="finished run"):
        train(cfg)
    kilt = write_jsonl(tmp_path / "nq-dev.jsonl", [
        {"id": "d1", "input": "Where does Alamar Ala live?", "output": [{"answer": "x"}, {"provenance": [{"passage_id": "p000"}]}]},
        {"id": "d2", "input": "Who?", "output": [{"answer": "y"}]},  # no gold passage: left out
    ])  # fmt: skip
    cfg.eval.dev = str(kilt)
    dev = load_dev(cfg.eval, load_passages(cfg.data.passages))
    assert dev.prompts == ["Q: Where does Alamar Ala live? A:"] and dev.gold == [{"p000"}]
    assert len(dev.index_ids) == 40  # a small corpus: the whole passages file is the index


def test_max_minutes_stops_after_the_step_that_spends_the_budget_and_saves_final(setup, tmp_path):
    root, corpus, model_path = setup
    out = tmp_path / "run"
    cfg = small_config(
        root, corpus, model_path, out=str(out), max_minutes=1e-6, **{"eval.dev": str(corpus["dev"])}
    )
    final = train(cfg)
    rows = loss_rows(out)
    assert [r["step"] for r in rows] == [1]  # 4 steps planned; the first one already outlasts 60 us
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [1]  # the final evaluation names the step it stopped at
    assert ImpRAG.from_pretrained(final).generate(["Q: Where? A:"], [["a passage"]], max_new_tokens=1)
    cfg.max_minutes = 0
    with pytest.raises(UserError, match="max_minutes"):
        cfg.validate()


def test_frozen_retrieval_stage_trains_the_reader_and_keeps_vectors_and_fingerprint(setup, tmp_path):
    root, corpus, _ = setup
    model_path = tmp_path / "calibrated"  # a calibrated backbone, as after `imprag index`: its means stay
    m = ImpRAG.from_pretrained(setup[2], b=1, t=2, k=2, l_max=24)
    m.calibrate(corpus["texts"])
    m.save_pretrained(model_path)
    cfg = small_config(root, corpus, model_path, out=str(tmp_path / "read"), **{"optim.lr": 1e-2})
    cfg.stages = [StageConfig(name="read", objective="lm", steps=2, lm_weight=1.0, freeze_retrieval=True)]
    final = train(cfg)
    before = ImpRAG.from_pretrained(model_path)
    after = ImpRAG.from_pretrained(final)
    assert after.fingerprint() == before.fingerprint()  # an index built before the stage stays valid
    prompts, texts = ["Q: Where does Ala live? A:", "Q: Who wrote it? A:"], ["Ala lives in Oslo.", "x"]
    assert_close(after.embed_queries(prompts), before.embed_queries(prompts), rtol=0, atol=0)
    assert_close(after.embed_passages(texts), before.embed_passages(texts), rtol=0, atol=0)
    b, a = before.lm.state_dict(), after.lm.state_dict()
    changed = {n for n in b if not torch.equal(b[n], a[n])}
    attn = "model.layers.1.self_attn"
    assert f"{attn}.v_proj.weight" in changed and "model.layers.2.mlp.up_proj.weight" in changed
    assert f"{attn}.o_proj.weight" in changed and "lm_head.weight" in changed
    frozen = {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", f"{attn}.q_proj.weight"}
    assert not changed & (frozen | {f"{attn}.k_proj.weight", "model.layers.1.input_layernorm.weight"})


# ---------------------------------------------------------------- rows that read their provenance (verify)
def verify_config(root, corpus, model_path, **overrides):
    """J_gen only over reading comprehension, verify rows reading their passage, and plain text."""
    cfg = small_config(root, corpus, model_path, **overrides)
    cfg.data.retrieval_free = [
        SourceConfig(path=str(corpus["rc"]), task="rc"),
        SourceConfig(path=str(corpus["verify"]), read_provenance=True),
    ]
    cfg.stages = [StageConfig(name="gen", objective="lm", steps=2, lm_weight=1.0, batch_size=8)]
    return cfg


def test_rows_reading_their_provenance_match_a_hand_built_reference(setup):
    root, corpus, model_path = setup
    cfg = verify_config(root, corpus, model_path)
    m, obj, mix = objective_for(cfg, model_path)
    rc, verify = mix.retrieval_free
    assert not any(ex.read for ex in rc) and all(ex.read for ex in verify)
    gold = [json.loads(x)["output"][1]["provenance"][0]["passage_id"] for x in Path(corpus["verify"]).open()]
    assert [ex.read for ex in verify] == [[g] for g in gold]
    # the passages read: the row's own among distractors, at a place drawn the same by any objective
    again = TrainObjective(m, cfg, obj.collator, obj.passages, DistEnv())
    for ex in verify:
        ids = obj.read_ids(ex)
        assert ex.read[0] in ids and len(set(ids)) == len(ids) == obj.read_passages == 2
        assert again.read_ids(ex) == ids
    assert len({next(p for p in obj.read_ids(ex) if p != ex.read[0]) for ex in verify}) > 1
    assert {obj.read_ids(ex).index(ex.read[0]) for ex in verify} == {0, 1}
    cfg.data.retrieval_free[1].read_distractors = False  # the provenance alone
    alone = objective_for(cfg, model_path)[2].retrieval_free[1]
    assert [obj.read_ids(ex) for ex in alone] == [[g] for g in gold]

    plain = [Slot("retrieval_free", ex) for ex in rc[:2]] + [Slot("plain_text", ex) for ex in mix.texts[:2]]
    reading = [Slot("retrieval_free", ex) for ex in verify[:3]]
    stage = StageConfig(name="gen", objective="lm", steps=1, lm_weight=1.0)

    def reference(rows, read: bool):
        batch = obj.collator.sequences(
            [r.prompt for r in rows], [r.response for r in rows], [r.plain for r in rows]
        )
        passages = (
            m.tokenize_passages([[obj.passages[p] for p in obj.read_ids(r)] for r in rows]) if read else None
        )
        logits = m.forward(batch.input_ids, batch.attention_mask, passages=passages).logits
        s, c = response_nll(logits, batch.labels)
        return s, c, batch.tokens + (int(passages.attention_mask.sum()) if read else 0)

    with torch.no_grad():
        s1, c1, t1 = reference([s.example for s in plain], read=False)
        s2, c2, t2 = reference([s.example for s in reading], read=True)
        mixed = [plain[0], reading[0], plain[2], reading[1], plain[1], reading[2], plain[3]]
        out = obj(mixed, 0, len(mixed), stage)
        assert_close(out["lm"], (s1 + s2) / (c1 + c2), rtol=1e-5, atol=1e-6)
        assert int(out["tokens"]) == t1 + t2
        # rows without `read` take the plain path, exactly as before
        out = obj(plain, 0, len(plain), stage)
        assert torch.equal(out["lm"], s1 / c1) and int(out["tokens"]) == t1
    # the passages' key/value reach the verify rows' loss
    obj(reading, 0, len(reading), stage)["loss"].backward()
    assert grads(m)["model.layers.2.self_attn.v_proj.weight"] > 0


def test_read_provenance_errors_are_one_line(setup, tmp_path):
    root, corpus, model_path = setup
    cfg = verify_config(root, corpus, model_path)
    cfg.data.retrieval[0].read_provenance = True
    msg = one_line_error(cfg)
    assert msg.startswith("--data.retrieval.0.read_provenance: only data.retrieval_free sources")
    rows = [json.loads(x) for x in Path(corpus["verify"]).read_text().splitlines()[:3]]
    rows[1]["output"][1]["provenance"][0]["passage_id"] = "zzz"
    bad = write_jsonl(tmp_path / "verify.jsonl", rows)
    cfg = verify_config(root, corpus, model_path)
    cfg.data.retrieval_free[1].path = str(bad)
    msg = one_line_error(cfg)
    assert msg.startswith(f"{bad}:2: provenance passage 'zzz' is not in --data.passages")
    assert "--data.on_error skip" in msg
    cfg.data.on_error = "skip"
    mix = Mixture(cfg, load_passages(cfg.data.passages))
    assert [ex.id for ex in mix.retrieval_free[1]] == ["verify-train-00000", "verify-train-00002"]


def test_a_run_with_verify_rows_reading_their_provenance(setup, tmp_path):
    root, corpus, model_path = setup
    out = tmp_path / "verify"
    cfg = verify_config(root, corpus, model_path, out=str(out))
    cfg.data.retrieval_free = cfg.data.retrieval_free[1:]
    # then a joint stage: self-distillation over the retrieval rows, J_gen over all of them
    cfg.stages.append(StageConfig(name="joint", objective="distill", steps=1, lm_weight=1.0, batch_size=8))
    final = train(cfg)
    rows = loss_rows(out)
    assert [(r["step"], r["stage"]) for r in rows] == [(1, "gen"), (2, "gen"), (3, "joint")]
    assert all(r["lm"] > 0 for r in rows) and "distill" in rows[2]
    assert ImpRAG.from_pretrained(final).generate(["Is this statement true? x A:"], [["a"]], max_new_tokens=1)
