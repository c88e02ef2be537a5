"""The index pipeline (stream -> shards -> merge -> FAISS -> store) with a deterministic text encoder.

The encoder maps each text to a fixed vector (seeded by its sha256), so every number below has an
independent brute-force reference. The ImpRAG model itself is covered in test_index_model.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from imprag.errors import UserError
from imprag.index.build import Encoder, IndexBuildConfig, build_index, merge
from imprag.index.corpus import find_repeated_id
from imprag.index.faiss_build import plan_factory
from imprag.index.faiss_index import Index
from imprag.passage import passage_text

DIM = 32


def text_vector(text: str, dim: int = DIM) -> np.ndarray:
    """Clustered when the text starts with 'c<k> ': center k + small noise; otherwise plain noise."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    noise = np.random.default_rng(seed).standard_normal(dim)
    body = text.split(": ", 1)[-1]
    if body.startswith("c") and " " in body and body[1 : body.index(" ")].isdigit():
        center = np.random.default_rng(10_000 + int(body[1 : body.index(" ")])).standard_normal(dim) * 3
        return (center + 0.5 * noise).astype(np.float32)
    return noise.astype(np.float32)


class HashEncoder:
    """Counts calls, so tests can see which chunks a resumed build re-embedded."""

    def __init__(self, dim: int = DIM, fingerprint: str = "hash-v1"):
        self.calls: list[int] = []
        self.encoder = Encoder(self.embed, dim, fingerprint, {"b": 3, "state": "pre_rope", "model": "hash"})

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.stack([text_vector(t, self.encoder.dim) for t in texts])


def write_corpus(path: Path, n: int, clustered: bool = False, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta river mountain city capital author book song war king queen".split()
    recs = []
    for i in range(n):
        body = " ".join(rng.choice(words, size=int(rng.integers(3, 40))))
        text = f"c{i % 40} {i} {body}" if clustered else f"{i} {body}"
        recs.append({"id": f"p{i}", "title": f"Title {i % 13}", "text": text, "extra": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return recs


def cfg(out: Path, passages: Path, **kw) -> IndexBuildConfig:
    kw.setdefault("chunk_size", 64)
    kw.setdefault("dtype", "float32")
    kw.setdefault("show_progress", False)
    kw.setdefault("poll_seconds", 0.05)
    return IndexBuildConfig(out=out, passages=passages, **kw)


def brute_force(q: np.ndarray, v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ v.T  # (B, N)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(s, top, axis=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("corpus") / "passages.jsonl"
    return path, write_corpus(path, 500)


@pytest.fixture(scope="module")
def flat(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("flat")
    build_index(cfg(out, corpus[0]), HashEncoder().encoder)
    return out


def test_flat_is_exact_brute_force(flat, corpus):
    _, recs = corpus
    v = np.stack([text_vector(passage_text(r)) for r in recs])  # (N, dim), independent of the index
    index = Index.load(flat)
    assert len(index) == 500 and index.dim == DIM
    np.testing.assert_array_equal(index.vectors(), v)
    np.testing.assert_array_equal(index.vectors([7, 3, 499]), v[[7, 3, 499]])
    q = np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32)
    rows, scores = index.search(q, k=10)
    ref_rows, ref_scores = brute_force(q, v, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # torch tensors and a single (dim,) vector are accepted too
    rows_t, _ = index.search(torch.from_numpy(q), k=10)
    np.testing.assert_array_equal(rows_t, ref_rows)
    rows_1, _ = index.search(q[0], k=10)
    np.testing.assert_array_equal(rows_1[0], ref_rows[0])
    # rows map back to the original records (extra fields kept)
    assert index.passages(rows[0]) == [recs[int(r)] for r in ref_rows[0]]


def test_search_pads_when_k_exceeds_count_and_checks_dim(flat):
    index = Index.load(flat)
    rows, scores = index.search(np.ones((1, DIM), np.float32), k=510)
    assert (rows[0, :500] >= 0).all() and (rows[0, 500:] == -1).all() and np.isneginf(scores[0, 500:]).all()
    assert len(index.passages(rows[0])) == 500
    with pytest.raises(UserError, match="32-d"):
        index.search(np.ones((2, 31), np.float32), k=3)


def test_metadata_records_the_build(flat, corpus):
    meta = json.loads((flat / "metadata.json").read_text())
    data = corpus[0].read_bytes()
    assert meta["count"] == 500 and meta["dim"] == DIM and meta["factory"] == "Flat"
    assert meta["passages"]["size"] == len(data)
    assert meta["passages"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["b"] == 3 and meta["state"] == "pre_rope" and meta["fingerprint"] == "hash-v1"
    assert meta["built_at"] and meta["embed_seconds"] >= 0
    assert [s["rows"] for s in meta["shards"]] == [64] * 7 + [52]


def test_chunks_are_embedded_longest_first(tmp_path, corpus):
    enc = HashEncoder()
    seen: list[list[str]] = []
    inner = enc.embed
    enc.encoder.embed = lambda texts: (seen.append(texts), inner(texts))[1]
    build_index(cfg(tmp_path / "o", corpus[0], chunk_size=500, batch_size=50), enc.encoder)
    lengths = [len(t) for batch in seen for t in batch]
    assert lengths == sorted(lengths, reverse=True)  # one chunk: batches go from longest to shortest


def test_two_shards_then_merge_equal_one_process(tmp_path, flat, corpus):
    out = tmp_path / "two"
    for rank in (0, 1):
        r = build_index(cfg(out, corpus[0], rank=rank, world_size=2, merge=False), HashEncoder().encoder)
        assert r.metadata is None and r.embed.chunks_mine == 4
    merge(out, show_progress=False)
    a, b = Index.load(flat), Index.load(out)
    np.testing.assert_array_equal(a.vectors(), b.vectors())
    np.testing.assert_array_equal(np.load(flat / "offsets.npy"), np.load(out / "offsets.npy"))
    assert (flat / "index.faiss").read_bytes() == (out / "index.faiss").read_bytes()


def test_rank0_waits_for_other_ranks(tmp_path, corpus):
    import threading

    out = tmp_path / "tr"
    done: dict = {}
    t = threading.Thread(
        target=lambda: done.update(
            r=build_index(cfg(out, corpus[0], rank=0, world_size=2, wait=True), HashEncoder().encoder)
        )
    )
    t.start()
    t.join(timeout=1.0)
    assert t.is_alive()  # rank 0 finished its chunks and waits for rank 1's
    build_index(cfg(out, corpus[0], rank=1, world_size=2), HashEncoder().encoder)
    t.join(timeout=30)
    assert not t.is_alive() and done["r"].metadata["count"] == 500


def test_merge_refuses_missing_chunks(tmp_path, corpus):
    out = tmp_path / "half"
    build_index(cfg(out, corpus[0], rank=1, world_size=2, merge=False), HashEncoder().encoder)
    with pytest.raises(UserError, match=r"4 of 8 chunks are not embedded yet \(chunk 0, 2, 4, 6\)"):
        merge(out, show_progress=False)
    with pytest.raises(UserError, match="unfinished"):
        Index.load(out)


def test_resume_ignores_debris_and_redoes_only_unfinished_chunks(tmp_path, flat, corpus):
    out = tmp_path / "resume"
    build_index(cfg(out, corpus[0]), HashEncoder().encoder)
    shards = out / "shards"
    # what a kill -9 can leave: chunk 2 without its manifest (vectors written), chunk 5 with only a
    # temp file, no metadata; plus an unrelated stale temp file
    (shards / "chunk-000002.json").unlink()
    (shards / "chunk-000005.json").unlink()
    (shards / "chunk-000005.vectors.npy").unlink()
    (shards / ".chunk-000005.vectors.npy.x.tmp").write_bytes(b"\x93NUMPY half")
    (shards / "chunk-000002.vectors.npy").write_bytes(b"garbage")
    for name in ("metadata.json", "index.faiss"):
        (out / name).unlink()
    enc = HashEncoder()
    build_index(cfg(out, corpus[0]), enc.encoder)
    assert sum(enc.calls) == 128  # chunks 2 and 5 only
    assert (flat / "index.faiss").read_bytes() == (out / "index.faiss").read_bytes()
    np.testing.assert_array_equal(Index.load(flat).vectors(), Index.load(out).vectors())
    # the same command on a finished folder does nothing
    enc2 = HashEncoder()
    build_index(cfg(out, corpus[0]), enc2.encoder)
    assert enc2.calls == []


def test_resume_with_other_settings_is_refused(tmp_path, corpus):
    out = tmp_path / "o"
    build_index(cfg(out, corpus[0]), HashEncoder().encoder)
    with pytest.raises(UserError, match="chunk_size 64 -> 32"):
        build_index(cfg(out, corpus[0], chunk_size=32), HashEncoder().encoder)
    with pytest.raises(UserError, match="fingerprint"):
        build_index(cfg(out, corpus[0]), HashEncoder(fingerprint="other").encoder)


def test_refactory_from_existing_shards(tmp_path, corpus):
    out = tmp_path / "o"
    build_index(cfg(out, corpus[0]), HashEncoder().encoder)
    meta = merge(out, factory="HNSW32", show_progress=False)
    assert meta["factory_effective"] == "HNSW32" and Index.load(out).metadata["factory"] == "HNSW32"


def _bad_corpus(path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "title": "A", "text": "first"}).encode(),
        b'{"id": "b", "text": "unterminated',
        json.dumps({"id": "c", "title": "C"}).encode(),
        b"",
        json.dumps({"id": "d", "text": "   "}).encode(),
        '{"id": "e", "text": "caf\u00e9"}'.encode("latin-1"),
        b"[1, 2]",
        json.dumps({"text": "no id"}).encode(),
        json.dumps({"id": "f", "title": "F", "text": "last"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_malformed_lines_fail_by_default(tmp_path):
    p = tmp_path / "bad.jsonl"
    _bad_corpus(p)
    with pytest.raises(UserError, match=rf"{p}:2: not valid JSON .*--on-error skip"):
        build_index(cfg(tmp_path / "o", p), HashEncoder().encoder)


def test_malformed_lines_skipped_and_reported(tmp_path, caplog):
    p = tmp_path / "bad.jsonl"
    _bad_corpus(p)
    with caplog.at_level(logging.WARNING):
        r = build_index(cfg(tmp_path / "o", p, on_error="skip", chunk_size=4), HashEncoder().encoder)
    expected = {
        2: "not valid JSON",
        3: 'missing "text"',
        5: 'empty "text"',
        6: "not valid UTF-8",
        7: "expected a JSON object",
        8: 'missing "id"',
    }
    for line, what in expected.items():
        assert any(f"bad.jsonl:{line}: {what}" in m for m in caplog.messages), (line, caplog.messages)
    meta = r.metadata
    assert meta["count"] == 2 and meta["skipped"]["count"] == 6
    assert [s["line"] for s in meta["skipped"]["lines"]] == sorted(expected)
    assert [x["id"] for x in Index.load(tmp_path / "o").passages([0, 1])] == ["a", "f"]


def test_float16_overflow_is_reported(tmp_path, corpus):
    enc = Encoder(lambda texts: np.full((len(texts), 4), 1e6, np.float32), 4, "big")
    with pytest.raises(UserError, match="--dtype float32"):
        build_index(cfg(tmp_path / "o", corpus[0], dtype="float16"), enc)


def test_passage_store_follows_a_moved_file_and_detects_changes(tmp_path, corpus):
    src = tmp_path / "p.jsonl"
    src.write_bytes(corpus[0].read_bytes())
    build_index(cfg(tmp_path / "o", src), HashEncoder().encoder)
    moved = tmp_path / "moved.jsonl"
    src.rename(moved)
    with pytest.raises(UserError, match="not found"):
        Index.load(tmp_path / "o").passages([0])
    assert Index.load(tmp_path / "o", passages=moved).passages([3])[0]["id"] == "p3"
    moved.write_bytes(moved.read_bytes() + b"\n")
    with pytest.raises(UserError, match="changed since indexing"):
        Index.load(tmp_path / "o", passages=moved).passages([3])


def test_ivf_and_hnsw_recall_against_flat(tmp_path):
    p = tmp_path / "clustered.jsonl"
    write_corpus(p, 4000, clustered=True)
    enc = HashEncoder()
    build_index(cfg(tmp_path / "flat", p, chunk_size=1000), enc.encoder)
    flat = Index.load(tmp_path / "flat")
    rng = np.random.default_rng(3)
    centers = np.stack([np.random.default_rng(10_000 + c).standard_normal(DIM) * 3 for c in range(40)])
    q = (centers[rng.integers(0, 40, 200)] + 0.5 * rng.standard_normal((200, DIM))).astype(np.float32)
    exact, _ = flat.search(q, 10)
    for factory in ("IVF64,Flat", "HNSW32"):
        meta = merge(tmp_path / "flat", factory=factory, show_progress=False)
        approx, _ = Index.load(tmp_path / "flat").search(q, 10)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
        assert recall >= 0.95, (factory, recall, meta["search_params"])
    # IVF-PQ: compressed codes lose neighbours; rescoring 100 candidates with the stored vectors wins them back
    merge(tmp_path / "flat", factory="IVF64,PQ8", show_progress=False)
    pq = Index.load(tmp_path / "flat")
    raw, _ = pq.search(q, 10)
    reranked, scores = pq.search(q, 10, rerank=100)
    r_raw, r_rerank = (
        np.mean([len(set(a) & set(e)) / 10 for a, e in zip(x, exact)]) for x in (raw, reranked)
    )
    assert r_rerank >= 0.95 and r_rerank > r_raw, (r_raw, r_rerank)
    v = flat.vectors()
    np.testing.assert_allclose(scores, np.take_along_axis(q @ v.T, reranked, axis=1), rtol=1e-5, atol=1e-5)


def test_ivf_pq_small_corpus_is_clamped_with_a_note(tmp_path, corpus, caplog):
    out = tmp_path / "o"
    build_index(cfg(out, corpus[0]), HashEncoder().encoder)
    with caplog.at_level(logging.INFO):
        meta = merge(out, factory="IVF4096,PQ8", show_progress=False)
    assert meta["factory_effective"] == "IVF12,PQ8x3"
    assert any("IVF4096 needs" in m for m in caplog.messages) and len(meta["factory_notes"]) == 2
    rows, _ = Index.load(out).search(np.ones((2, DIM), np.float32), 5)
    assert (rows >= 0).all()


def test_plan_factory_rules():
    assert plan_factory("Flat", 10, 8).train_size == 0
    big = plan_factory("IVF65536,PQ64", 33_000_000, 1024)
    assert (
        big.effective == "IVF65536,PQ64"
        and big.train_size == 39 * 65536
        and big.search_params["nprobe"] == 256
    )
    with pytest.raises(UserError, match="divisible"):
        plan_factory("IVF16,PQ7", 10_000, 32)
    with pytest.raises(UserError, match="no passages"):
        plan_factory("Flat", 0, 32)


def test_repeated_id_is_refused_before_embedding(tmp_path, corpus):
    recs = [dict(r) for r in corpus[1][:200]]
    recs[150]["id"] = recs[40]["id"]  # lines 151 and 41
    recs[170]["id"] = recs[3]["id"]  # a later repeat: the first one is named
    recs[190]["id"] = 41  # an integer id is compared as its string
    recs[195]["id"] = "41"
    p = tmp_path / "dup.jsonl"
    p.write_text(
        "".join(json.dumps(r) + "\n" for r in recs[:120])
        + "not json\n\n"
        + "".join(json.dumps(r) + "\n" for r in recs[120:])
    )
    enc = HashEncoder()
    with pytest.raises(UserError, match=rf"{p}:153: passage id 'p40' repeats line 41; ids must be unique"):
        build_index(cfg(tmp_path / "o", p, on_error="skip"), enc.encoder)
    assert enc.calls == [] and not (tmp_path / "o").exists()  # nothing embedded, nothing left behind
    recs[150]["id"], recs[170]["id"] = "x150", "x170"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert find_repeated_id(p, show_progress=False) == ("41", 196, 191)
    recs[195]["id"] = "x195"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert find_repeated_id(p, show_progress=False) is None


def test_repeated_id_check_survives_hash_collisions(tmp_path, corpus, monkeypatch):
    import imprag.index.corpus as corpus_module

    monkeypatch.setattr(corpus_module, "_id_hash", lambda pid: 7)  # every id collides
    p = tmp_path / "p.jsonl"
    recs = [dict(r) for r in corpus[1][:30]]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert find_repeated_id(p, show_progress=False) is None
    recs[25]["id"] = recs[9]["id"]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert find_repeated_id(p, show_progress=False) == ("p9", 26, 10)
