"""Checkpoints: written to a temporary folder and renamed into place, so a folder named `step-N` is always
complete.

    out/checkpoints/step-00000100/model/        ImpRAG folder (HF weights + tokenizer + imprag.json)
    out/checkpoints/step-00000100/trainer.pt    optimizer, scheduler, RNG of every process, adapters
    out/checkpoints/step-00000100/trainer.json  step, stage, tokens, elapsed (readable)
    out/final/                                  the trained model, a normal ImpRAG folder
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imprag.errors import UserError
from imprag.io import atomic_write_json

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
FINAL_DIR = "final"
_STEP_RE = re.compile(r"^step-(\d+)$")


def step_dirs(out: str | Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    root = Path(out) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / "trainer.pt").exists()]


def latest_checkpoint(out: str | Path) -> Path | None:
    dirs = step_dirs(out)
    return dirs[-1] if dirs else None


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp folder to `final`, replacing an older one without a moment of absence
    that could be mistaken for 'no checkpoint' (the old one is renamed aside first)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) into a fresh temp folder beside `final`, then rename it to `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: str | Path,
    step: int,
    save_model: Callable[[Path], None],
    trainer_state: dict[str, Any],
    info: dict[str, Any],
    keep: int,
) -> Path:
    """Rank 0 only: write out/checkpoints/step-N atomically and drop the oldest beyond `keep`."""
    final = Path(out) / CKPT_DIR / f"step-{step:08d}"

    def write(tmp: Path) -> None:
        save_model(tmp / "model")
        torch.save(trainer_state, tmp / "trainer.pt")
        atomic_write_json(tmp / "trainer.json", info)

    write_dir_atomically(final, write)
    for old in step_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s", final)
    return final


def load_trainer_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
        info = json.loads((ckpt / "trainer.json").read_text())
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(
            f"{ckpt}: unreadable checkpoint ({e}); delete it to resume from an earlier one"
        ) from None
    return state, info
