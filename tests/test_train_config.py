"""Config plumbing: YAML file + dotted flags -> TrainConfig, --print-config, one-line errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from imprag.cli import main
from imprag.config_io import add_config_flags, dump_yaml, flag_overrides, load_config, option
from imprag.errors import UserError
from imprag.train.config import TrainConfig


@dataclass
class Inner:
    x: int = 1
    name: str = "a"


@dataclass
class Outer:
    lr: float = 0.1
    flag: bool = False
    maybe: int | None = None
    words: list[str] = option(default_factory=lambda: ["p", "q"], help="some words")
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = option(default_factory=lambda: [Inner(1, "one"), Inner(2, "two")], help="items")


def parse(argv: list[str]) -> dict[str, str]:
    p = argparse.ArgumentParser()
    add_config_flags(p, Outer)
    return flag_overrides(p.parse_args(argv))


def test_file_then_flags_then_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\ninner:\n  name: b\nitems:\n  - {x: 7}\n")
    cfg = load_config(
        Outer, f, parse(["--inner.x", "3", "--flag", "--items.0.name", "seven", "--words", "u,v"])
    )
    assert cfg == Outer(
        lr=0.5, flag=True, maybe=None, words=["u", "v"], inner=Inner(3, "b"), items=[Inner(7, "seven")]
    )
    # list items not in the file start from the defaults; a new item may be appended at the end
    cfg = load_config(Outer, None, parse(["--items.1.x", "5", "--items.2.name", "three", "--maybe", "4"]))
    assert cfg.items == [Inner(1, "one"), Inner(5, "two"), Inner(1, "three")]
    assert cfg.maybe == 4
    assert load_config(Outer, None, parse(["--maybe", "null", "--flag", "false"])).flag is False
    # the dump reads back to the same config
    again = load_config(Outer, None, None, base=yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_errors_name_file_line_key_and_flag(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lr: 0.5\ninner:\n  x: 2\n  nmae: typo\n")
    with pytest.raises(UserError) as e:
        load_config(Outer, f)
    assert str(e.value).startswith(f"{f}:4: key 'inner.nmae': unknown key")
    assert "name" in str(e.value) and "\n" not in str(e.value)
    f.write_text("lr: fast\n")
    with pytest.raises(UserError, match=r"bad.yaml:1: key 'lr': expected a number, got 'fast'"):
        load_config(Outer, f)
    f.write_text("lr: [1\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(Outer, f)
    with pytest.raises(UserError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    with pytest.raises(UserError, match=r"^--inner.x: expected an integer, got 'many'$"):
        load_config(Outer, None, parse(["--inner.x", "many"]))
    with pytest.raises(UserError, match="index 5 would leave a gap"):
        load_config(Outer, None, parse(["--items.5.x", "1"]))


def test_train_cli_print_config_and_unknown_flag(tmp_path, capsys):
    f = tmp_path / "train.yaml"
    f.write_text("model:\n  path: some/model\nstages:\n  - {name: w, objective: nce, steps: 3}\n")
    assert (
        main(
            [
                "train",
                "--config",
                str(f),
                "--optim.lr",
                "3e-4",
                "--stages.0.lm_weight",
                "0.5",
                "--print-config",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 3e-4 and printed["model"]["path"] == "some/model"
    assert printed["stages"] == [
        {"name": "w", "objective": "nce", "epochs": None, "steps": 3, "lm_weight": 0.5, "retrieval_weight": 1.0,
         "batch_size": None, "grad_accum": None, "lr_scale": 1.0, "freeze_retrieval": False,
         "retrieval_ratio": None, "retrieval_free_ratio": None, "plain_text_ratio": None, "passage_grad": True}
    ]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(f), "--optim.lrr", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--optim.lrr" in err
    f.write_text("model:\n  path: m\n  colour: red\n")
    assert main(["train", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"imprag train: error: {f}:3: key 'model.colour': unknown key; known keys under model: "
        "path, b, t, k, l_max, state, reader, pooling, similarity, temperature, calibration, dtype"
    )


def test_train_stages_by_name_or_index(tmp_path, capsys):
    f = tmp_path / "train.yaml"
    f.write_text(
        "model:\n  path: m\nstages:\n  - {name: w, objective: nce, steps: 3}\n  - {name: d, objective: lm, steps: 4}\n"
    )
    argv = [
        "train",
        "--config",
        str(f),
        "--stages.d.steps",
        "9",
        "--stages.w.freeze_retrieval",
        "--stages.0.lm-weight=0.5",
    ]
    assert main([*argv, "--print-config"]) == 0
    stages = yaml.safe_load(capsys.readouterr().out)["stages"]
    assert [(s["name"], s["steps"], s["lm_weight"], s["freeze_retrieval"]) for s in stages] == [
        ("w", 3, 0.5, True),
        ("d", 9, 0.0, False),
    ]
    # without a file the default recipe's names address its stages
    assert main(["train", "--stages.distill.epochs", "2", "--print-config"]) == 0
    stages = yaml.safe_load(capsys.readouterr().out)["stages"]
    assert [(s["name"], s["epochs"]) for s in stages] == [("warmup", 3), ("distill", 2)]
    assert main(["train", "--config", str(f), "--stages.distill.steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "imprag train: error: --stages.distill.steps: stages has no item named 'distill' (names: w, d; or give the item's index)"
    )
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(f), "--stagez.0.steps", "1"])
    assert e.value.code == 2 and "unrecognized arguments: --stagez.0.steps" in capsys.readouterr().err


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(TrainConfig, path).validate()
    if cfg.cached_warmup.steps:  # retrieval trained first, by the cached warmup
        assert all(s.objective != "nce" or s.lm_weight > 0 for s in cfg.stages)
    else:  # a retrieval-only warmup
        assert cfg.stages[0].objective == "nce" and cfg.stages[0].lm_weight == 0.0


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model.path": ""}, "--model.path is required"),
        ({"stages.0.steps": "3"}, "exactly one of --stages.0.epochs or --stages.0.steps"),
        ({"data.hard_negatives": "10"}, "--data.hard_negatives must be from 0 to 9"),
        ({"stages.0.lm_weight": "0", "stages.0.retrieval_weight": "0"}, "both loss weights are 0"),
        ({"data.retrieval": "[]"}, "needs retrieval data"),
        ({"optim.lr": "0"}, "--optim.lr must be positive"),
        ({"stages.0.freeze_retrieval": "true"}, "set --stages.0.objective lm"),
    ],
)
def test_validation_names_the_flag(override, message):
    base = {
        "model": {"path": "m"},
        "data": {"passages": "p.jsonl", "retrieval": [{"path": "mined.jsonl"}]},
    }
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(TrainConfig, None, override, base=base).validate()
