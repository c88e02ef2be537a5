"""`--config FILE.yaml` / `--print-config` for every command: its typed Options are its flags and its file
keys (train's nested TrainConfig: test_train_config)."""

from __future__ import annotations

import pytest
import yaml

from imprag.cli import COMMANDS, main

# the fewest arguments each command parses with (nothing runs: --print-config exits first)
MINIMAL = {
    "pull": ["smollm2", "--out", "weights"],
    "calibrate": ["--model", "m", "--passages", "p.jsonl"],
    "index": ["--out", "idx"],
    "search": ["q", "--model", "m", "--index", "idx"],
    "mine": ["--passages", "p.jsonl", "--data", "nq.jsonl", "--out", "mined.jsonl"],
    "eval": ["--model", "m", "--data", "nq.jsonl", "--method", "closed-book", "--out", "run"],
    "score": ["--predictions", "pred.jsonl", "--gold", "nq.jsonl"],
    "report": ["run1", "--out", "rep"],
    "ask": ["q", "--model", "m", "--index", "idx"],
    "serve": ["--model", "m", "--index", "idx"],
    "world": ["--out", "w"],
    "demo": [],
    "train": ["--model.path", "m"],
}


def test_every_command_is_covered():
    assert set(MINIMAL) == set(COMMANDS)


def printed(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_print_config_reads_back_as_a_config_file(name, tmp_path, capsys):
    positional = [a for a in MINIMAL[name][:1] if not a.startswith("-")]
    first = printed([name, *MINIMAL[name], "--print-config"], capsys)
    options = yaml.safe_load(first)
    assert isinstance(options, dict) and "config" not in options and "print_config" not in options
    f = tmp_path / "c.yaml"
    f.write_text(first)
    # the file alone stands for every flag (the required ones too); positionals stay on the command line
    assert printed([name, *positional, "--config", str(f), "--print-config"], capsys) == first


def test_file_values_apply_and_command_line_flags_win(tmp_path, capsys):
    f = tmp_path / "serve.yaml"
    f.write_text(
        "model: ckpt\nindex: idx\nport: 8001\nmax-batch-size: 4\nallow_fingerprint_mismatch: true\nk: 3\n"
    )
    out = yaml.safe_load(
        printed(["serve", "--config", str(f), "--port", "9000", "-k", "5", "--print-config"], capsys)
    )
    assert out["port"] == 9000 and out["k"] == 5  # flags win
    assert out["max_batch_size"] == 4 and out["allow_fingerprint_mismatch"] is True and out["model"] == "ckpt"
    assert out["max_wait_ms"] == 10.0  # untouched: the flag's default
    f.write_text('stop: [END, "\\n\\n"]\nmodel: m\nindex: i\ntemperature: 0.5\n')
    out = yaml.safe_load(printed(["ask", "q", "--config", str(f), "--print-config"], capsys))
    assert out["stop"] == ["END", "\n\n"] and out["temperature"] == 0.5


@pytest.mark.parametrize(
    "text, says",
    [
        ("port: 8001\ncolour: red\n", "c.yaml:2: key 'colour': unknown key; known keys: model, index, host, port"),
        ("max_batch_size: many\n", "c.yaml:1: key 'max_batch_size': expected an integer, got 'many'"),
        ("dtype: f8\n", "c.yaml:1: key 'dtype': 'f8' is not a choice; choose one of: float32, bfloat16, float16"),
        ("allow_fingerprint_mismatch: 3\n", "key 'allow_fingerprint_mismatch': expected true or false, got 3"),
        ("port: [1, 2]\n", "key 'port': expected an integer, got [1, 2]"),
        ("port: [1\n", "c.yaml:2: not valid YAML"),
        ("- 1\n", "expected a mapping of settings at the top level"),
    ],
)  # fmt: skip
def test_a_bad_file_is_one_line_naming_file_line_and_key(text, says, tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    assert main(["serve", "--model", "m", "--index", "i", "--config", str(f), "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("imprag serve: error: ") and says in line, line


def test_missing_file_and_required_flags_still_named(tmp_path, capsys):
    assert main(["ask", "q", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err
    f = tmp_path / "c.yaml"
    f.write_text("model: m\n")  # --index is still required
    assert main(["ask", "q", "--config", str(f), "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        "imprag ask: error: --index: required but missing (`--help` lists the flags)"
    )


def test_same_named_copies_options_by_field_name_and_given_values_win():
    from pathlib import Path

    from imprag.commands.index import Options
    from imprag.config_io import same_named
    from imprag.index.build import IndexBuildConfig

    options = Options(out=Path("idx"), factory="HNSW32", batch_size=7, nprobe=3)
    cfg = same_named(IndexBuildConfig, options, batch_size=9)
    # copied, given (wins over options), and absent from Options (IndexBuildConfig's default)
    assert (cfg.out, cfg.factory, cfg.nprobe) == (Path("idx"), "HNSW32", 3)
    assert cfg.batch_size == 9 and cfg.poll_seconds == IndexBuildConfig(out=Path("x")).poll_seconds
