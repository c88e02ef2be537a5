"""A training run killed with SIGKILL and continued with --resume follows the same loss curve as a run that
was never interrupted (model, optimizer, schedule, RNG and data position all restored)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from test_train_support import loss_rows, make_corpus, make_model, small_config

from imprag.config_io import to_dict
from imprag.train.checkpoint import latest_checkpoint
from imprag.train.config import StageConfig
from imprag.train.loop import train


def config(root, corpus, model, out: str, **kw):
    cfg = small_config(root, corpus, model, out=str(root / out), save_every=3, keep_checkpoints=1, **kw)
    cfg.stages = [
        StageConfig(name="warmup", objective="nce", steps=6, lm_weight=0.0, batch_size=8),
        StageConfig(name="distill", objective="distill", steps=6, lm_weight=1.0, batch_size=8),
    ]
    cfg.optim.lr = 3e-3
    return cfg


def kill_after_first_checkpoint(cfg, tmp_path) -> int:
    """Run `imprag train` in a child process and SIGKILL it once its first checkpoint exists.
    Returns the checkpoint's step."""
    path = tmp_path / f"{os.path.basename(cfg.out)}.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imprag", "train", "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    try:
        while latest_checkpoint(cfg.out) is None:
            if proc.poll() is not None:
                raise AssertionError(f"training ended early: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    ckpt = latest_checkpoint(cfg.out)
    assert ckpt is not None and not (cfg.out and os.path.exists(os.path.join(cfg.out, "final")))
    return int(ckpt.name.split("-")[1])


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-dropout"])
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, lora):
    torch.set_num_threads(1)
    corpus = make_corpus(tmp_path)
    model = make_model(tmp_path, corpus["texts"])
    # LoRA with dropout: the adapters and the RNG stream must be restored as well
    extra = {"lora.enabled": True, "lora.r": 4, "lora.dropout": 0.2} if lora else {}
    train(config(tmp_path, corpus, model, "straight", **extra))
    cfg = config(tmp_path, corpus, model, "killed", **extra)
    step = kill_after_first_checkpoint(cfg, tmp_path)
    assert step == 3
    cfg.resume = True
    train(cfg)
    a, b = loss_rows(tmp_path / "straight"), loss_rows(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, 13))  # rows the killed run wrote after step 3 were dropped
    for ra, rb in zip(a, b):
        assert ra["stage"] == rb["stage"]
        for key in ("loss", "nce", "lm", "distill", "lr"):
            assert ra.get(key) == pytest.approx(rb.get(key), abs=1e-6), (ra["step"], key)
        assert ra["tokens"] == rb["tokens"]
