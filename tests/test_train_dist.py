"""Two gloo processes (torch.multiprocessing spawn, the environment torchrun would set) give the same losses
and weights as one process with the same global batch, in-batch negatives gathered across processes."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_train_support import loss_rows, make_corpus, make_model, small_config
from torch.testing import assert_close

from imprag.train.config import SourceConfig, StageConfig, TrainConfig
from imprag.train.data import Mixture, load_passages, micro_batches
from imprag.train.loop import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: TrainConfig) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    )  # fmt: skip
    torch.set_num_threads(1)
    train(cfg)


def run_processes(cfg: TrainConfig, world: int) -> None:
    mp.spawn(_worker, args=(world, _free_port(), cfg), nprocs=world, join=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    corpus = make_corpus(root, n=40)
    return root, corpus, make_model(root, corpus["texts"])


def config(root, corpus, model, out: str, **kw) -> TrainConfig:
    cfg = small_config(root, corpus, model, out=str(root / out), **kw)
    cfg.stages = [
        StageConfig(name="warmup", objective="nce", steps=2, lm_weight=0.0, batch_size=8),
        StageConfig(name="distill", objective="distill", steps=2, lm_weight=1.0, batch_size=8),
        StageConfig(name="read", objective="lm", steps=1, lm_weight=1.0, batch_size=8, freeze_retrieval=True),
    ]
    cfg.cached_warmup.steps = 3  # rank 0 caches, every process trains the same full-batch steps
    cfg.seed = 1  # step 4 gives one process no retrieval example and the other no LM-only example
    cfg.optim.lr = 5e-3  # big steps, so that any difference in the gradient shows in later losses
    cfg.loss.tau_t = 0.05  # a peaked teacher: the distillation term is far from zero
    return cfg


def compare(root, single: str, multi: str) -> None:
    a, b = loss_rows(root / single), loss_rows(root / multi)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for key in ("loss", "nce", "lm", "distill"):
            assert (key in ra) == (key in rb)
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=1e-5), (ra["step"], key)
        assert ra["tokens"] == rb["tokens"]
    assert a[0]["loss"] != a[1]["loss"]  # the model did change between steps
    wa = load_file(str(root / single / "final" / "model.safetensors"))
    wb = load_file(str(root / multi / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert any((root / multi / "cache").rglob("k-*.pt"))  # the cached warmup ran
    ca = load_file(str(root / single / "final" / "calibration.safetensors"))
    cb = load_file(str(root / multi / "final" / "calibration.safetensors"))
    assert ca.keys() == cb.keys() and "query.qa" in ca
    for k in ca:
        assert_close(ca[k], cb[k], rtol=1e-3, atol=1e-4)
    for k in wa:
        # Adam turns float noise in near-zero gradients into updates of up to ~lr: compare at 1e-4 (updates are ~1e-2)
        assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)


def test_the_plan_leaves_a_process_without_some_kind_of_example(setup):
    """So the runs below cover the dummy calls that keep the processes' collectives aligned."""
    root, corpus, model = setup
    cfg = config(root, corpus, model, "plan")
    mix = Mixture(cfg, load_passages(cfg.data.passages))
    plan = mix.plan(2)[1]
    slots = mix.step_batch(plan, 3)
    shares = [micro_batches(slots, 1, 2, r)[0] for r in range(2)]
    kinds = [{s.is_retrieval for s in micro[lo:hi]} for micro, lo, hi in shares]
    assert kinds == [{False}, {True}]


def test_two_processes_equal_one_process_ddp(setup):
    root, corpus, model = setup
    torch.set_num_threads(1)
    train(config(root, corpus, model, "single"))
    run_processes(config(root, corpus, model, "ddp"), 2)
    compare(root, "single", "ddp")


@pytest.mark.slow
def test_two_processes_equal_one_process_fsdp(setup):
    """FSDP, with a dev evaluation (gathers the sharded weights), checkpoints and a resume."""
    root, corpus, model = setup
    if not (root / "single" / "final").exists():
        torch.set_num_threads(1)
        train(config(root, corpus, model, "single"))
    cfg = config(root, corpus, model, "fsdp", save_every=3, keep_checkpoints=1)
    cfg.distributed.strategy = "fsdp"
    cfg.eval.dev, cfg.eval.every = str(corpus["dev"]), 2
    run_processes(cfg, 2)
    compare(root, "single", "fsdp")
    evals = [
        r for r in map(json.loads, (root / "fsdp" / "metrics.jsonl").read_text().splitlines()) if "eval" in r
    ]
    assert [e["step"] for e in evals] == [2, 4, 5]
    # continue from the step-3 checkpoint (sharded optimizer state gathered, saved, re-sharded): the same
    # steps 4-5 again (a distillation step and the frozen-retrieval reader step)
    before = loss_rows(root / "fsdp")
    cfg.resume = True
    run_processes(cfg, 2)
    after = loss_rows(root / "fsdp")
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5]
    for ra, rb in zip(before, after):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


def test_rows_reading_their_provenance_two_processes_equal_one(setup):
    """Verify rows read their passage; at seed 0 one process lacks them at step 1, the other at step 2
    (each runs a dummy read call then), both have some at step 3."""
    root, corpus, model = setup
    runs = {}
    for name, world in (("verify-single", 1), ("verify-ddp", 2)):
        cfg = small_config(root, corpus, model, out=str(root / name))
        cfg.data.retrieval_free.append(SourceConfig(path=str(corpus["verify"]), read_provenance=True))
        cfg.stages = [StageConfig(name="gen", objective="lm", steps=3, lm_weight=1.0, batch_size=8)]
        cfg.optim.lr = 5e-3
        if world == 1:
            mix = Mixture(cfg, load_passages(cfg.data.passages))
            plan = mix.plan(2)[0]
            shares = [
                [micro_batches(mix.step_batch(plan, s), 1, 2, r)[0] for r in range(2)] for s in range(3)
            ]
            reads = [[sum(x.reads for x in micro[lo:hi]) > 0 for micro, lo, hi in step] for step in shares]
            assert reads == [[False, True], [True, False], [True, True]]
            torch.set_num_threads(1)
            train(cfg)
        else:
            run_processes(cfg, world)
        runs[name] = loss_rows(root / name)
    a, b = runs["verify-single"], runs["verify-ddp"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra["lm"] == pytest.approx(rb["lm"], abs=1e-5) and ra["tokens"] == rb["tokens"]
