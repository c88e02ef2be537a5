"""Malformed input to every `imprag` command, as one table: exit code 2, one error line on stderr that
names the file/line/flag, no traceback, no warning, and nothing left behind that looks complete.

The CLI runs in-process (`imprag.cli.main`) with its log lines sent to the captured stderr as the real
command sends them, so "one line" counts what a user would see (INFO progress lines are allowed; WARNING
and ERROR log lines are not). Real tiny models and a real index (tests/conftest.py); broken model folders
are real copies with real damage.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from imprag.cli import main

# files or folders whose presence says "this output is finished"
COMPLETE_MARKERS = ("metadata.json", "metrics.json", "table.md", "report.json", "final", "imprag.json")


@dataclass
class Case:
    id: str
    argv: Callable[[dict], list[str]]  # fixture paths -> command line
    says: tuple[str, ...]  # every one of these is in the error line (file / line / flag / what to do)
    out: str | None = None  # key of the output path that must not look complete


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def _damaged_copy(src: Path, dst: Path, damage: Callable[[Path], None]) -> Path:
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def f(tmp_path_factory, tiny_model_dir, tiny_index) -> dict:
    """Every path the table refers to."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from imprag.model.tiny import save_tiny

    root = tmp_path_factory.mktemp("malformed")
    passages = tiny_index.parent / "passages.jsonl"
    p: dict = {"root": root, "model": tiny_model_dir, "index": tiny_index, "passages": passages}
    p["short"] = save_tiny(root / "short-window", max_positions=1024)  # k*l_max = 1280 > 1024
    p["other"] = save_tiny(root / "other-weights", seed=1)
    p["truncated"] = _damaged_copy(
        tiny_model_dir, root / "truncated", lambda d: _truncate(d / "model.safetensors")
    )
    p["foreign"] = _damaged_copy(
        tiny_model_dir,
        root / "foreign",
        lambda d: save_file({"x.weight": __import__("torch").zeros(2, 2)}, d / "model.safetensors"),
    )
    sharded = root / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="300KB")
    for t in tiny_model_dir.glob("tokenizer*"):
        shutil.copy(t, sharded)
    (sharded / "model-00002-of-00004.safetensors").unlink()
    p["no_shard"] = sharded
    nq = [
        {"id": f"q{i}", "input": f"where does river {i} flow", "output": [{"answer": "north"}]}
        for i in range(3)
    ]
    p["nq"] = _jsonl(root / "nq-dev.jsonl", nq)
    p["nq_badline"] = _jsonl(root / "nq-badline.jsonl", [nq[0], '{"id": "q1", "input": ', nq[2]])
    p["nq_noanswer"] = _jsonl(root / "nq-noanswer.jsonl", [nq[0], {"id": "q1", "input": "x", "output": []}])
    p["nq_dupe"] = _jsonl(root / "nq-dupe.jsonl", [nq[0], nq[1], nq[0]])
    (root / "binary.jsonl").write_bytes(
        b'{"id": "d0", "title": "t", "text": "ok"}\n\xff\xfe\x00\x81garbage\n'
    )
    p["binary"] = root / "binary.jsonl"
    p["p_badline"] = _jsonl(root / "p-badline.jsonl", ['{"id": "d0", "title": "t", "text": "a"}', "{oops"])
    p["p_notext"] = _jsonl(root / "p-notext.jsonl", [{"id": "d0", "title": "t", "text": "a"}, {"id": "d1"}])
    p["p_dupe"] = _jsonl(
        root / "p-dupe.jsonl",
        [{"id": "d0", "title": "t", "text": "a"}, {"id": "d0", "title": "u", "text": "b"}],
    )
    p["preds"] = _jsonl(root / "preds.jsonl", [{"id": "q0", "output": [{"answer": "north"}]}])
    p["preds_unknown"] = _jsonl(root / "preds-unknown.jsonl", [{"id": "zz", "output": [{"answer": "x"}]}])
    p["preds_dupe"] = _jsonl(
        root / "preds-dupe.jsonl", [{"id": "q0", "output": [{"answer": "x"}]}, {"id": "q0", "output": []}]
    )
    p["preds_badline"] = _jsonl(
        root / "preds-badline.jsonl", [{"id": "q0", "output": [{"answer": "x"}]}, "[1,"]
    )
    p["preds_number_id"] = _jsonl(root / "preds-noid.jsonl", [{"output": [{"answer": "x"}]}])
    p["preds_listanswer"] = _jsonl(root / "preds-list.jsonl", [{"id": "q0", "output": [{"answer": ["x"]}]}])
    p["not_index"] = root / "not-an-index"
    p["not_index"].mkdir()
    p["run_bad"] = root / "run-bad"
    p["run_bad"].mkdir()
    (p["run_bad"] / "metrics.json").write_text('{"hello": 1}')
    ids = [json.loads(x)["id"] for x in passages.read_text().splitlines()]
    mined = {"id": "m0", "task": "nq", "prompt": "Q: where? A:", "answers": ["north"]}
    mined |= {
        "gold_passage_ids": ids[:1],
        "candidates": ids[:20],
        "scores": [1.0 / (r + 1) for r in range(20)],
    }
    p["mined"] = _jsonl(root / "mined.jsonl", [mined] * 4)

    def train_yaml(name: str, model: Path, extra: str = "") -> Path:
        y = root / f"{name}.yaml"
        y.write_text(
            f"out: {root / ('train-' + name)}\nmodel:\n  path: {model}\n{extra}data:\n"
            f"  passages: {passages}\n  retrieval:\n    - path: {p['mined']}\n"
            "stages:\n  - {name: w, objective: nce, steps: 1, batch_size: 2}\n"
        )
        return y

    p["train_short"] = train_yaml("short", p["short"])
    p["train_truncated"] = train_yaml("truncated", p["truncated"])
    p["train_no_shard"] = train_yaml("no-shard", p["no_shard"])
    p["train_lmax"] = train_yaml("lmax", tiny_model_dir, "  k: 10\n  l_max: 500\n")
    p["train_badyaml"] = root / "bad.yaml"
    p["train_badyaml"].write_text("model:\n  path: [unclosed\n")
    for name in ("out", "out.json", "train-short", "train-truncated", "train-no-shard", "train-lmax"):
        p[name] = root / name
    return p


def s(key: str) -> Callable[[dict], str]:
    return lambda p: str(p[key])


def cmd(*parts) -> Callable[[dict], list[str]]:
    """Parts are strings or fixture lookups (callables)."""
    return lambda p: [x(p) if callable(x) else x for x in parts]


M, IDX, P, OUT = s("model"), s("index"), s("passages"), s("out")
WINDOW = ("k=10", "l_max=128", "1024-token window", "k * l_max <= 1016")
TRUNC = ("truncated/model.safetensors", "truncated", "checkpoint again")
SHARD = ("model-00002-of-00004.safetensors", "shard missing", "checkpoint again")
FOREIGN = ("foreign/model.safetensors", "lack", "checkpoint again")

CASES = [
    # ---- index
    Case("index window", cmd("index", "--model", s("short"), "--passages", P, "--out", OUT, "--quiet"), WINDOW, "out"),
    Case("index truncated weights", cmd("index", "--model", s("truncated"), "--passages", P, "--out", OUT), TRUNC, "out"),
    Case("index missing shard", cmd("index", "--model", s("no_shard"), "--passages", P, "--out", OUT), SHARD, "out"),
    Case("index foreign weights", cmd("index", "--model", s("foreign"), "--passages", P, "--out", OUT), FOREIGN, "out"),
    Case("index bad JSON line", cmd("index", "--model", M, "--passages", s("p_badline"), "--out", OUT, "--quiet"), ("p-badline.jsonl:2", "--on-error skip"), "out"),
    Case("index binary bytes", cmd("index", "--model", M, "--passages", s("binary"), "--out", OUT, "--quiet"), ("binary.jsonl:2",), "out"),
    Case("index missing text", cmd("index", "--model", M, "--passages", s("p_notext"), "--out", OUT, "--quiet"), ("p-notext.jsonl:2", "text"), "out"),
    Case("index repeated id", cmd("index", "--model", M, "--passages", s("p_dupe"), "--out", OUT, "--quiet"), ("p-dupe.jsonl", "d0"), "out"),
    Case("index missing passages", cmd("index", "--model", M, "--passages", "/nonexistent/p.jsonl", "--out", OUT), ("/nonexistent/p.jsonl",), "out"),
    Case("index batch size", cmd("index", "--model", M, "--passages", P, "--out", OUT, "--batch-size", "0"), ("--batch-size",), "out"),
    Case("index missing --out", cmd("index", "--model", M, "--passages", P), ("--out", "--help"), None),
    # ---- calibrate
    Case("calibrate truncated weights", cmd("calibrate", "--model", s("truncated"), "--passages", P), TRUNC),
    Case("calibrate missing passages", cmd("calibrate", "--model", M, "--passages", "/nonexistent/p.jsonl"), ("/nonexistent/p.jsonl", "cannot read")),
    Case("calibrate binary passages", cmd("calibrate", "--model", M, "--passages", s("binary"), "--max-passages", "0"), ("--max-passages",)),
    # ---- search
    Case("search window", cmd("search", "q", "--model", s("short"), "--index", IDX), WINDOW),
    Case("search truncated weights", cmd("search", "q", "--model", s("truncated"), "--index", IDX), TRUNC),
    Case("search missing shard", cmd("search", "q", "--model", s("no_shard"), "--index", IDX), SHARD),
    Case("search not an index", cmd("search", "q", "--model", M, "--index", s("not_index")), ("not-an-index",)),
    Case("search index of other weights", cmd("search", "q", "--model", s("other"), "--index", IDX), ("fingerprint",)),
    Case("search bad -k", cmd("search", "q", "--model", M, "--index", IDX, "-k", "0"), ("-k",)),
    # ---- ask
    Case("ask window", cmd("ask", "q", "--model", s("short"), "--index", IDX), WINDOW),
    Case("ask truncated weights", cmd("ask", "q", "--model", s("truncated"), "--index", IDX), TRUNC),
    Case("ask foreign weights", cmd("ask", "q", "--model", s("foreign"), "--index", IDX), FOREIGN),
    Case("ask answer budget", cmd("ask", "q", "--model", M, "--index", IDX, "--max-tokens", "3000"), ("--max-tokens 3000", "4096-token window")),
    Case("ask template", cmd("ask", "q", "--model", M, "--index", IDX, "--template", "Q: A:"), ("--template", "{prompt}")),
    Case("ask k beyond model", cmd("ask", "q", "--model", M, "--index", IDX, "-k", "99"), ("-k 99",)),
    # ---- eval
    Case("eval window", cmd("eval", "--model", s("short"), "--data", s("nq"), "--method", "closed-book", "--out", OUT, "--quiet"), WINDOW, "out"),
    Case("eval truncated weights", cmd("eval", "--model", s("truncated"), "--data", s("nq"), "--method", "closed-book", "--out", OUT, "--quiet"), TRUNC, "out"),
    Case("eval missing shard", cmd("eval", "--model", s("no_shard"), "--data", s("nq"), "--method", "closed-book", "--out", OUT, "--quiet"), SHARD, "out"),
    Case("eval bad JSON line", cmd("eval", "--model", M, "--data", s("nq_badline"), "--method", "closed-book", "--out", OUT, "--quiet"), ("nq-badline.jsonl:2",), "out"),
    Case("eval example without answers", cmd("eval", "--model", M, "--data", s("nq_noanswer"), "--task", "nq", "--method", "closed-book", "--out", OUT, "--quiet"), ("nq-noanswer.jsonl:2",), "out"),
    Case("eval unknown task", cmd("eval", "--model", M, "--data", s("nq"), "--task", "nqq", "--method", "closed-book", "--out", OUT, "--quiet"), ("nqq",), "out"),
    Case("eval imprag without index", cmd("eval", "--model", M, "--data", s("nq"), "--method", "imprag", "--out", OUT, "--quiet"), ("--index",), "out"),
    Case("eval answer budget", cmd("eval", "--model", M, "--data", s("nq"), "--method", "imprag", "--index", IDX, "--max-new-tokens", "3000", "--out", OUT, "--quiet"), ("--max-new-tokens 3000",), "out"),
    Case("eval bad --normalize", cmd("eval", "--model", M, "--data", s("nq"), "--method", "closed-book", "--out", OUT, "--normalize", "fold"), ("--normalize",), "out"),
    # ---- serve (refused before it binds)
    Case("serve window", cmd("serve", "--model", s("short"), "--index", IDX, "--port", "0"), WINDOW),
    Case("serve truncated weights", cmd("serve", "--model", s("truncated"), "--index", IDX, "--port", "0"), TRUNC),
    Case("serve missing shard", cmd("serve", "--model", s("no_shard"), "--index", IDX, "--port", "0"), SHARD),
    Case("serve no room for a prompt", cmd("serve", "--model", M, "--index", IDX, "--port", "0", "--max-tokens-cap", "2810"), ("--max-tokens-cap 2810", "leaves no room for a prompt")),
    Case("serve batch size", cmd("serve", "--model", M, "--index", IDX, "--port", "0", "--max-batch-size", "0"), ("--max-batch-size",)),
    Case("serve bad port", cmd("serve", "--model", M, "--index", IDX, "--port", "70000"), ("--port",)),
    # ---- train
    Case("train window", cmd("train", "--config", s("train_short")), WINDOW + ("--model.k",), "train-short"),
    Case("train truncated weights", cmd("train", "--config", s("train_truncated")), TRUNC, "train-truncated"),
    Case("train missing shard", cmd("train", "--config", s("train_no_shard")), SHARD, "train-no-shard"),
    Case("train l_max beyond window", cmd("train", "--config", s("train_lmax")), ("k=10", "l_max=500", "4096-token window"), "train-lmax"),
    Case("train bad YAML", cmd("train", "--config", s("train_badyaml")), ("bad.yaml",)),
    Case("train unknown flag", cmd("train", "--config", s("train_short"), "--optim.lrr", "1"), ("--optim.lrr",)),
    # ---- score
    Case("score bad JSON line", cmd("score", "--predictions", s("preds_badline"), "--gold", s("nq"), "--out", s("out.json")), ("preds-badline.jsonl:2",), "out.json"),
    Case("score unknown id", cmd("score", "--predictions", s("preds_unknown"), "--gold", s("nq"), "--out", s("out.json")), ("preds-unknown.jsonl:1", "'zz'"), "out.json"),
    Case("score repeated id", cmd("score", "--predictions", s("preds_dupe"), "--gold", s("nq"), "--out", s("out.json")), ("preds-dupe.jsonl:2", "duplicate"), "out.json"),
    Case("score no id", cmd("score", "--predictions", s("preds_number_id"), "--gold", s("nq"), "--out", s("out.json")), ("preds-noid.jsonl:1", "id"), "out.json"),
    Case("score answer not a string", cmd("score", "--predictions", s("preds_listanswer"), "--gold", s("nq"), "--out", s("out.json")), ("preds-list.jsonl:1", "string"), "out.json"),
    Case("score repeated gold id", cmd("score", "--predictions", s("preds"), "--gold", s("nq_dupe"), "--task", "nq", "--out", s("out.json")), ("nq-dupe.jsonl", "duplicate"), "out.json"),
    Case("score bad --k", cmd("score", "--predictions", s("preds"), "--gold", s("nq"), "--k", "0,x", "--out", s("out.json")), ("--k",), "out.json"),
    Case("score bad --normalize", cmd("score", "--predictions", s("preds"), "--gold", s("nq"), "--normalize", "nfkd"), ("--normalize",)),
    # ---- mine, report, world, pull, demo
    Case("mine missing data", cmd("mine", "--passages", P, "--data", "/nonexistent/nq.jsonl", "--out", s("out.json")), ("/nonexistent/nq.jsonl",), "out.json"),
    Case("mine bad line", cmd("mine", "--passages", P, "--data", s("nq_badline"), "--task", "nq", "--out", s("out.json")), ("nq-badline.jsonl:2",), "out.json"),
    Case("mine bad --top-k", cmd("mine", "--passages", P, "--data", s("nq"), "--out", s("out.json"), "--top-k", "0"), ("--top-k",), "out.json"),
    Case("report missing run", cmd("report", "/nonexistent/run", "--out", OUT), ("/nonexistent/run",), "out"),
    Case("report not an eval run", cmd("report", s("run_bad"), "--out", OUT), ("run-bad/metrics.json",), "out"),
    Case("world bad seed", cmd("world", "--out", OUT, "--seed", "abc"), ("--seed",), "out"),
    Case("pull unknown model", cmd("pull", "gpt9", "--out", OUT), ("gpt9",), "out"),
    Case("demo bad size", cmd("demo", "--out", OUT, "--size", "huge"), ("--size",), "out"),
]  # fmt: skip


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is emitted (capsys swaps it per phase)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@pytest.fixture
def cli_stderr(capsys):
    """Send log records to the captured stderr in the CLI's format and level, as `imprag` does."""
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield capsys
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def looks_complete(path: Path) -> bool:
    if path.is_file():
        return True
    return path.is_dir() and any((path / m).exists() for m in COMPLETE_MARKERS)


def test_the_table_covers_every_command():
    from imprag.cli import COMMANDS

    assert len(CASES) >= 40
    assert {c.argv(_Any())[0] for c in CASES} == set(COMMANDS)


class _Any(dict):
    def __missing__(self, key):
        return Path("/x")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_one_line_exit_2(case: Case, f, cli_stderr, tmp_path):
    paths = dict(f)
    for key in ("out", "out.json"):  # a fresh output path per case
        paths[key] = tmp_path / key
    argv = case.argv(paths)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors (made one line by the CLI)
        rc = e.code
    err = cli_stderr.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("INFO ")]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"imprag {argv[0]}: error: "), line
    for part in case.says:
        assert part in line, f"{part!r} not in {line!r}"
    if case.out is not None:
        assert not looks_complete(paths[case.out]), sorted(p.name for p in paths[case.out].iterdir())


def test_a_real_process_prints_exactly_one_line(f, tmp_path):
    """The same contract from a real `python -m imprag` process (real logging setup, real stderr)."""
    import subprocess

    out = tmp_path / "out"
    argv = ["eval", "--model", str(f["short"]), "--data", str(f["nq"]), "--method", "closed-book"]
    argv += ["--out", str(out), "--quiet"]
    r = subprocess.run([sys.executable, "-m", "imprag", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    lines = [x for x in r.stderr.splitlines() if not x.startswith("INFO ")]  # progress lines may precede
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("imprag eval: error: k=10 passages x l_max=128"), lines[0]
    assert "1024-token window" in lines[0]
    assert not looks_complete(out)
