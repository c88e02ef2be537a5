"""`imprag index` / `imprag search` with a real tiny ImpRAG model: kill -9 + resume, split builds,
the fingerprint check, and retrieval equal to brute force over the model's own vectors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imprag.cli import main
from imprag.errors import UserError
from imprag.index.faiss_index import Index
from imprag.passage import passage_text

N, CHUNK = 480, 30
PROMPTS = ["Q: which river flows through the capital? A:", "Q: who wrote the book about the king? A:"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(0)
    words = "the capital of France is Paris river flows north through valley author wrote book king queen war song city".split()
    recs = [
        {
            "id": f"d{i}",
            "title": f"Doc {i % 17}",
            "text": " ".join(rng.choice(words, size=int(rng.integers(4, 60)))),
        }
        for i in range(N)
    ]
    path = tmp_path_factory.mktemp("corpus") / "passages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path, recs


def index_args(model: Path, passages: Path, out: Path, *extra: str) -> list[str]:
    return [
        "index",
        "--model",
        str(model),
        "--passages",
        str(passages),
        "--out",
        str(out),
        "--chunk-size",
        str(CHUNK),
        "--batch-size",
        "16",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_model_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("ref") / "index"
    assert main(index_args(tiny_model_dir, corpus[0], out)) == 0
    return out


def assert_same_index(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "metadata.json").read_text()) for d in (a, b))
    for key in ("built_at", "embed_seconds", "merge_seconds"):
        ma.pop(key), mb.pop(key)
    assert ma == mb
    np.testing.assert_array_equal(np.load(a / "offsets.npy"), np.load(b / "offsets.npy"))
    np.testing.assert_array_equal(Index.load(a).vectors(), Index.load(b).vectors())
    assert (a / "index.faiss").read_bytes() == (b / "index.faiss").read_bytes()


def test_index_holds_the_models_passage_vectors_and_retrieve_is_brute_force(ref, tiny_model_dir, corpus):
    from imprag.model.imprag import ImpRAG

    m = ImpRAG.from_pretrained(tiny_model_dir)
    index = Index.load(ref, model=m)
    meta = index.metadata
    assert (meta["count"], meta["dim"], meta["b"], meta["state"]) == (N, m.dim, m.config.b, m.config.state)
    assert meta["fingerprint"] == m.fingerprint() and meta["max_length"] == m.config.l_max
    stored = index.vectors()  # float16 on disk
    direct = m.embed_passages([passage_text(r) for r in corpus[1]], batch_size=7).numpy()
    np.testing.assert_allclose(stored, direct, rtol=2e-3, atol=2e-3)
    hits = index.retrieve(m, PROMPTS, k=5)
    q = m.embed_queries(PROMPTS).numpy()
    s = q @ stored.T
    for i, h in enumerate(hits):
        top = np.argsort(-s[i], kind="stable")[:5]
        assert [x["row"] for x in h] == top.tolist()
        np.testing.assert_allclose([x["score"] for x in h], s[i, top], rtol=1e-4, atol=1e-4)
        assert [x["id"] for x in h] == [corpus[1][t]["id"] for t in top]
        assert all({"id", "title", "text", "score", "row"} <= set(x) for x in h)


def test_fingerprint_mismatch_is_refused_with_the_fix(ref, tmp_path, tiny_model_dir, capsys):
    from imprag.model.imprag import ImpRAG
    from imprag.model.tiny import save_tiny

    other_dir = save_tiny(tmp_path / "other", arch="llama", seed=1)
    other = ImpRAG.from_pretrained(other_dir)
    with pytest.raises(UserError, match=r"fingerprint .*re-index.*--allow-fingerprint-mismatch"):
        Index.load(ref, model=other)
    with pytest.raises(UserError, match="fingerprint"):  # same weights, another b
        Index.load(ref, model=ImpRAG.from_pretrained(tiny_model_dir, b=2))
    assert len(Index.load(ref, model=other, allow_mismatch=True).retrieve(other, PROMPTS[:1], k=3)[0]) == 3
    with pytest.raises(UserError, match="fingerprint"):  # loaded without a model, checked on use
        Index.load(ref).retrieve(other, PROMPTS[:1], k=3)
    assert main(["search", PROMPTS[0], "--model", str(other_dir), "--index", str(ref)]) == 2
    assert "--allow-fingerprint-mismatch" in capsys.readouterr().err


def test_search_command(ref, tiny_model_dir, capsys):
    assert main(["search", PROMPTS[0], "--model", str(tiny_model_dir), "--index", str(ref), "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["rank", "score", "id", "title"] and len(lines) == 5
    assert [ln.split()[0] for ln in lines[1:]] == ["1", "2", "3", "4"] and all(
        ln.split()[2].startswith("d") for ln in lines[1:]
    )
    assert (
        main(["search", *PROMPTS, "--model", str(tiny_model_dir), "--index", str(ref), "-k", "3", "--json"])
        == 0
    )
    objs = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [o["prompt"] for o in objs] == PROMPTS and all(len(o["passages"]) == 3 for o in objs)
    scores = [p["score"] for p in objs[0]["passages"]]
    assert scores == sorted(scores, reverse=True)


def test_kill9_during_embedding_then_resume_gives_the_same_index(ref, tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "killed"
    args = index_args(tiny_model_dir, corpus[0], out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imprag", *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    shards = out / "shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("chunk-*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no shards after 120 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(shards.glob("chunk-*.json")))
    assert 3 <= finished < N // CHUNK, f"the build finished ({finished} chunks) before it could be killed"
    assert not (out / "metadata.json").exists()
    with pytest.raises(UserError, match="unfinished"):
        Index.load(out)
    assert main(args) == 0  # the same command again
    assert_same_index(ref, out)


def test_two_shard_processes_then_merge_equal_one_process(ref, tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "split"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imprag",
                *index_args(tiny_model_dir, corpus[0], out, "--shard", f"{i}/2"),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr.decode()
        assert b"--merge-only" in stdout
    assert not (out / "metadata.json").exists()
    assert main(["index", "--merge-only", "--out", str(out), "--quiet"]) == 0
    assert_same_index(ref, out)


def test_bad_line_fails_by_default_and_names_the_line(tmp_path, tiny_model_dir, corpus, capsys):
    p = tmp_path / "bad.jsonl"
    lines = corpus[0].read_text().splitlines()
    lines[5] = '{"id": "x", "title": "no text"}'
    p.write_text("\n".join(lines[:40]) + "\n")
    assert main(index_args(tiny_model_dir, p, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert f'{p}:6: missing "text"' in err and "--on-error skip" in err and "Traceback" not in err
    assert main(index_args(tiny_model_dir, p, tmp_path / "o2", "--on-error", "skip")) == 0
    assert "39 passages" in capsys.readouterr().out and json.loads(
        (tmp_path / "o2" / "metadata.json").read_text()
    )["skipped"]["lines"] == [{"line": 6, "error": 'missing "text"'}]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(ref, tmp_path, tiny_model_dir, corpus):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "torchrun"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "imprag",
        *index_args(tiny_model_dir, corpus[0], out),
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    a, b = Index.load(ref), Index.load(out)
    assert len(a) == len(b) == N
    # torchrun sets OMP_NUM_THREADS=1: identical search results; vectors equal up to fp16 rounding
    np.testing.assert_allclose(a.vectors(), b.vectors(), rtol=1e-3, atol=1e-3)
    q = np.random.default_rng(0).standard_normal((20, a.dim)).astype(np.float32)
    np.testing.assert_array_equal(a.search(q, 10)[0], b.search(q, 10)[0])
