"""The demo's training plan per backbone and size, checked without loading a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from imprag.demo.pipeline import SIZES, Demo, DemoConfig


def plan(tmp_path: Path, backbone: str, size: str):
    demo = Demo(DemoConfig(out=tmp_path / "demo", size=size, backbone=backbone))
    return demo.train_config(tmp_path / "backbone").validate()


def stages(cfg) -> list[tuple]:
    return [(s.name, s.objective, s.steps, s.lm_weight, s.lr_scale, s.freeze_retrieval) for s in cfg.stages]


@pytest.mark.parametrize("size", list(SIZES))
def test_every_plan_validates_and_starts_with_a_retrieval_warmup(tmp_path, size):
    for backbone in ("tiny", "smollm2"):
        cfg = plan(tmp_path, backbone, size)
        first = cfg.stages[0]
        if backbone == "tiny":
            assert (first.name, first.objective, first.lm_weight) == ("warmup", "nce", 0.0)
            assert cfg.cached_warmup.steps == 0 and cfg.stages[-1].objective == "distill"
        else:  # the cached warmup trains retrieval before a reader stage that leaves it as it is
            assert cfg.cached_warmup.steps > 0 and [s.name for s in cfg.stages] == ["read"]
            assert first.freeze_retrieval and not first.passage_grad
        assert all(s.steps > 0 for s in cfg.stages)


def test_tiny_backbone_small_plan(tmp_path):
    cfg = plan(tmp_path, "tiny", "small")
    assert (cfg.model.b, cfg.model.t) == (2, 5)
    assert stages(cfg) == [
        ("warmup", "nce", 260, 0.0, 1.0, False),
        ("distill", "distill", 40, 1.0, 0.1, False),
    ]
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.loss.nce_tau) == (2e-3, "cosine", 1.0)


def test_smollm2_plan_reads_from_layer_b_to_the_top_at_the_full_learning_rate(tmp_path):
    cfg = plan(tmp_path, "smollm2", "small")
    assert (cfg.model.b, cfg.model.t) == (7, 29)  # SmolLM2-135M has 30 layers
    assert (cfg.cached_warmup.steps, cfg.cached_warmup.batch_size, cfg.cached_warmup.lr) == (1000, 64, 1e-3)
    assert stages(cfg) == [("read", "lm", 40, 1.0, 1.0, True)]
    assert [s.batch_size for s in cfg.stages] == [8]
    assert not any(s.passage_grad for s in cfg.stages)
    assert (cfg.optim.lr, cfg.optim.schedule) == (1e-4, "constant")
    assert [s.limit for s in cfg.data.retrieval] == [600, 600]
    # a quarter of the reader's batches: true/false statements reading their source passage alone (FEVER's
    # format); the stage keeps the data's shares
    assert (cfg.data.retrieval_ratio, cfg.data.retrieval_free_ratio) == (0.75, 0.25)
    read = cfg.stages[0]
    assert (read.retrieval_ratio, read.retrieval_free_ratio, read.plain_text_ratio) == (None, None, None)
    free = [(s.task, s.read_provenance, s.read_distractors) for s in cfg.data.retrieval_free]
    assert free == [("verify", True, False)]
    assert cfg.model.pooling is None  # the default retrieval state, not the paper's


def test_default_demo_is_the_real_backbone_with_every_method(tmp_path):
    from imprag.commands import demo as demo_command

    d = Demo(DemoConfig(out=tmp_path / "demo"))
    assert d.cfg.backbone == "smollm2" and d.cfg.size == "small"
    assert d.cfg.methods == ["imprag", "rag-bm25", "rag-dense", "closed-book", "oracle"]
    assert d.size.k == 5
    # 32 questions for the QA formats whose EM the methods are compared on, 16 for T-REx, zsRE and FEVER,
    # 8 for the others
    formats = ("nq", "hotpotqa", "simpleqa", "trex", "zsre", "fever", "aida", "2wikimultihopqa")
    assert [d.eval_limit(t) for t in formats] == [32, 32, 32, 16, 16, 16, 8, 8]
    assert demo_command.Options().backbone == "smollm2"


def test_eval_questions_sets_the_test_questions_per_format_and_their_own_folders(tmp_path):
    from imprag.errors import UserError

    default = Demo(DemoConfig(out=tmp_path / "demo"))
    more = Demo(DemoConfig(out=tmp_path / "demo", eval_questions=64))
    assert (default.eval_limit("nq"), more.eval_limit("nq")) == (32, 64)
    assert more.eval_limit("fever") == more.eval_limit("aida") == 64  # N for every format
    assert more.size.read_steps == default.size.read_steps  # training is the same
    # a rerun with another N never reuses the first run's cells or report
    assert default.results_dir("eval") == tmp_path / "demo" / "eval"
    assert more.results_dir("eval") == tmp_path / "demo" / "eval-64"
    assert more.results_dir("report") == tmp_path / "demo" / "report-64"
    with pytest.raises(UserError, match="--eval-questions must be >= 1"):
        DemoConfig(out=tmp_path / "demo", eval_questions=0)
