"""Learning: on a small synthetic world (imprag.demo.world), a tiny decoder trained from scratch with the
retrieval-only NCE warmup lifts its implicit-query recall@5 on *held-out* dev questions (entities never
seen in training) far above chance. Pseudo labels: BM25 over the world's passages (real bm25s)."""

from __future__ import annotations

import json
import logging

import torch

from imprag.data.kilt import load_examples
from imprag.data.mining import mine
from imprag.demo.world import generate_world
from imprag.io import atomic_write_jsonl
from imprag.model.imprag import ImpRAG
from imprag.model.tiny import save_tiny
from imprag.train.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    SourceConfig,
    StageConfig,
    TrainConfig,
)
from imprag.train.data import load_passages
from imprag.train.evaluate import dev_recall, load_dev
from imprag.train.loop import train

log = logging.getLogger(__name__)


def test_nce_warmup_lifts_implicit_query_recall_far_above_chance(tmp_path, capsys):
    torch.set_num_threads(1)  # shared CPUs: one thread is fastest
    world = tmp_path / "world"
    generate_world(world, seed=0, entities=300)
    texts = [json.loads(x)["text"] for x in (world / "passages.jsonl").read_text().splitlines()]
    model_dir = save_tiny(tmp_path / "tiny", "llama", texts=texts, layers=3, hidden=64, heads=4, kv_heads=2)
    passages = world / "passages.jsonl"
    mined = []
    for task in ("nq", "hotpotqa"):
        mined += mine(load_examples(world / "tasks" / task / "train.jsonl", task), passages, "bm25", top_k=50,
                      cache_dir=tmp_path / "cache")  # fmt: skip
    atomic_write_jsonl(tmp_path / "mined.jsonl", mined)
    dev_rows = mine(load_examples(world / "tasks" / "nq" / "dev.jsonl", "nq"), passages, "bm25", top_k=50,
                    cache_dir=tmp_path / "cache")  # fmt: skip
    atomic_write_jsonl(tmp_path / "dev.jsonl", dev_rows)

    cfg = TrainConfig(
        out=str(tmp_path / "out"),
        model=ModelConfig(path=str(model_dir), b=1, t=2, k=2, l_max=32),
        data=DataConfig(
            passages=str(passages),
            retrieval=[SourceConfig(path=str(tmp_path / "mined.jsonl"))],
            positives=5,
            hard_negatives=2,
        ),  # fmt: skip
        stages=[StageConfig(name="warmup", objective="nce", steps=60, lm_weight=0.0, batch_size=64)],
        optim=OptimConfig(lr=2e-3, schedule="constant"),
        eval=EvalConfig(dev=str(tmp_path / "dev.jsonl"), every=30, k=[1, 5]),
        progress=False,
    )
    dev = load_dev(cfg.eval, load_passages(passages))
    untrained = ImpRAG.from_pretrained(model_dir, b=1, t=2, k=2, l_max=32)
    untrained.calibrate(dev.index_texts)  # label-free means, as `imprag index` would compute
    before = dev_recall(untrained, dev, [1, 5])
    final = train(cfg)
    after = dev_recall(ImpRAG.from_pretrained(final), dev, [1, 5])
    evals = [
        json.loads(x)["eval"]
        for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in x
    ]
    with capsys.disabled():
        print(
            f"\n[learning] {len(dev.prompts)} held-out dev questions, {len(dev.index_ids)} passages: "
            f"recall@5 {before['recall@5']:.3f} -> {evals[0]['recall@5']:.3f} (step 30) -> {after['recall@5']:.3f} "
            f"(step 60); recall@1 {before['recall@1']:.3f} -> {after['recall@1']:.3f}; chance@5 {after['chance@5']:.3f}"
        )
    assert evals[-1]["recall@5"] == after["recall@5"]  # the trainer's dev eval == the saved model's
    assert after["recall@5"] >= max(0.3, 10 * after["chance@5"])
    assert after["recall@5"] >= before["recall@5"] + 0.2
