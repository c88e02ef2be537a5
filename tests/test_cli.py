"""The command line's handling of running out of memory: one line naming the fix, exit code 3."""

from __future__ import annotations

import pytest
import torch

import imprag.commands.world as world_command
from imprag.cli import main


def test_out_of_memory_is_one_line_naming_the_batch_size(monkeypatch, capsys, tmp_path):
    def oom(args):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.18 GiB.\nmore"
        )

    monkeypatch.setattr(world_command, "run", oom)
    assert main(["world", "--out", str(tmp_path / "w")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["imprag world: error: CUDA out of memory; lower --batch-size (or free the GPU)"]


def test_other_runtime_errors_are_not_disguised(monkeypatch, tmp_path):
    def bug(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(world_command, "run", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["world", "--out", str(tmp_path / "w")])


def test_python_memory_error_is_one_line_too(monkeypatch, capsys, tmp_path):
    def oom(args):
        raise MemoryError

    monkeypatch.setattr(world_command, "run", oom)
    assert main(["world", "--out", str(tmp_path / "w")]) == 3
    assert capsys.readouterr().err.strip().splitlines() == [
        "imprag world: error: out of memory; lower --batch-size (or free the GPU)"
    ]
