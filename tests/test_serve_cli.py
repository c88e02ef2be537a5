"""`imprag serve` as a command: refuses an index built by another model (one line, exit 2), a busy port and
bad flags the same way; in a real process, SIGTERM lets a streaming request finish, then exits 0."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from imprag.cli import main
from imprag.model.tiny import save_tiny


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir, tiny_index) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("serve_cli")
    index = tiny_index
    other = save_tiny(tmp / "other", seed=1)  # same shapes, other weights
    return {"model": tiny_model_dir, "index": index, "other": other}


def error_lines(err: str) -> list[str]:
    """stderr minus transformers' weight-loading progress bar: what the command itself said."""
    lines = [x for x in err.strip().splitlines() if not x.startswith(("Loading weights", "Writing model"))]
    assert not any("Traceback" in x for x in lines)
    return lines


def serve_args(model: Path, index: Path, *extra: str) -> list[str]:
    return ["serve", "--model", str(model), "--index", str(index), *extra]


def test_index_of_another_model_is_refused_with_one_line(built, capsys):
    assert main(serve_args(built["other"], built["index"], "--port", "0")) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("imprag serve: error: ") and "fingerprint" in err[0]


def test_busy_port_and_bad_flags_are_one_line_errors(built, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(serve_args(built["model"], built["index"], "--port", str(port))) == 2
        assert "already in use" in capsys.readouterr().err
    for flags, needle in [
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["-k", "50"], "-k 50"),
        (["--chat-template", "nonsense"], "--chat-template"),
        (["--api-key", ""], "--api-key"),
    ]:
        assert main(serve_args(built["model"], built["index"], "--port", "0", *flags)) == 2
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and needle in err[0], err


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The server's first stdout line (it prints its URL once the model is loaded and the port bound)."""
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    raise AssertionError(
        f"no startup line from the server (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}"
    )


def test_sigterm_finishes_the_request_in_flight_then_exits_0(built):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "IMPRAG_API_KEY": "env-key",
    }
    cmd = [sys.executable, "-m", "imprag", *serve_args(built["model"], built["index"], "--port", "0")]
    cmd += ["--max-tokens-cap", "64", "--threads", "1", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = read_line(proc, 120)
        assert "API key required" in line
        url = line.split(" at ")[1].split()[0]  # http://127.0.0.1:PORT/v1
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/models", timeout=10).status_code == 401  # key from IMPRAG_API_KEY
        body = {
            "model": built["model"].name,
            "prompt": "Q: which river? A:",
            "max_tokens": 64,
            "temperature": 0,
            "stream": True,
        }
        headers = {"authorization": "Bearer env-key"}
        with httpx.stream("POST", url + "/completions", json=body, headers=headers, timeout=120) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)  # while the answer is being decoded
            rest = [x for x in lines if x]
        chunks = [json.loads(x[len("data: ") :]) for x in [first, *rest] if x != "data: [DONE]"]
        assert rest[-1] == "data: [DONE]"
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/models", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
