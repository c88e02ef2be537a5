"""Dev retrieval recall during training: embed a small index with the *current* weights (bottom layers
only) and rank it for each dev prompt's implicit query by brute-force dot product.

The index is the whole passages file when it is small (`eval.full_index_max`), else the union of the dev
examples' mined candidates and gold passages. recall@k = share of dev examples with a gold passage among
their top k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from imprag.data.tasks import task_for_file
from imprag.errors import UserError
from imprag.io import iter_jsonl
from imprag.model.imprag import ImpRAG
from imprag.train.config import EvalConfig

log = logging.getLogger(__name__)


@dataclass
class DevSet:
    prompts: list[str]
    gold: list[set[str]]  # gold passage ids per prompt
    index_ids: list[str]  # the passages ranked
    index_texts: list[str]


def load_dev(cfg: EvalConfig, passages: dict[str, str], on_error: str = "fail") -> DevSet:
    assert cfg.dev is not None
    path = Path(cfg.dev)
    if not path.is_file():
        raise UserError(f"{path}: file not found (check --eval.dev)")
    first = next(iter_jsonl(path, on_error), (0, {}))[1]
    prompts: list[str] = []
    gold: list[set[str]] = []
    pool: list[str] = []
    if "candidates" in first:  # mined rows
        for _, row in iter_jsonl(path, on_error):
            g = {str(x) for x in row.get("gold_passage_ids") or [] if str(x) in passages}
            if not g or not isinstance(row.get("prompt"), str):
                continue
            prompts.append(row["prompt"])
            gold.append(g)
            pool += [str(c) for c in row.get("candidates") or [] if str(c) in passages] + sorted(g)
            if len(prompts) >= cfg.max_examples:
                break
    else:
        from imprag.data.kilt import load_examples

        task = cfg.task or task_for_file(path) or "nq"
        for ex in load_examples(path, task, on_error=on_error, limit=None):
            g = {p.passage_id for p in ex.provenance if p.passage_id is not None and p.passage_id in passages}
            if not g:
                continue
            prompts.append(ex.prompt)
            gold.append(g)
            pool += sorted(g)
            if len(prompts) >= cfg.max_examples:
                break
        if len(passages) > cfg.full_index_max:
            raise UserError(
                f"{path}: a task file as --eval.dev needs the whole passages file as its index, which has "
                f"{len(passages)} > --eval.full_index_max {cfg.full_index_max} passages; mine the dev set "
                "(`imprag mine`) or raise --eval.full_index_max"
            )
    if not prompts:
        raise UserError(f"{path}: no dev example names a gold passage of --data.passages (check --eval.dev)")
    if len(passages) <= cfg.full_index_max:
        ids = list(passages)
    else:
        ids = list(dict.fromkeys(pool))
    log.info("dev set: %d prompts against %d passages", len(prompts), len(ids))
    return DevSet(prompts, gold, ids, [passages[i] for i in ids])


@torch.no_grad()
def dev_recall(
    model: ImpRAG, dev: DevSet, ks: list[int], batch_size: int = 64, passage_vectors=None
) -> dict[str, float]:
    """{"recall@k": ..., "chance@k": k / index size} with the model's current weights. `passage_vectors`:
    {id: (D,)} already computed with these weights (the cached warmup's), used instead of embedding."""
    was_training = model.lm.training
    model.lm.eval()
    try:
        if passage_vectors is not None:
            P = torch.stack([passage_vectors[i] for i in dev.index_ids])
        else:
            P = model.embed_passages(dev.index_texts, batch_size=batch_size)  # (N, D)
        Q = model.embed_queries(dev.prompts, batch_size=batch_size)  # (B, D)
    finally:
        model.lm.train(was_training)
    scores = Q @ P.T  # (B, N)
    top = scores.topk(min(max(ks), P.shape[0]), dim=-1).indices.tolist()
    out: dict[str, float] = {}
    for k in ks:
        hits = sum(any(dev.index_ids[j] in g for j in row[:k]) for row, g in zip(top, dev.gold))
        out[f"recall@{k}"] = hits / len(dev.prompts)
    for k in ks:
        out[f"chance@{k}"] = min(1.0, k / len(dev.index_ids))
    return out
