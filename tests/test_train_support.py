"""Helpers shared by the training tests (no tests here): an in-test synthetic corpus with mined
candidates and retrieval-free task files, a tiny model folder, and a small TrainConfig."""

from __future__ import annotations

import json
import random
from pathlib import Path

from imprag.data.retrieval_free import verify_rows
from imprag.train.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    SourceConfig,
    StageConfig,
    TrainConfig,
)

FIRST = ["Ala", "Bren", "Cor", "Dov", "Eli", "Fen", "Gar", "Hal", "Iva", "Jor", "Kel", "Lun"]
LAST = ["mar", "dis", "ven", "tok", "ras", "pel", "nor", "gul"]
CITIES = ["Paris", "Berlin", "Oslo", "Rome", "Lima", "Cairo", "Quito", "Doha"]
JOBS = ["painter", "farmer", "doctor", "singer", "sailor", "writer"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def make_corpus(root: Path, n: int = 40, seed: int = 0, n_candidates: int = 20) -> dict[str, Path]:
    """n people, one passage each; a QA example per person with mined-style candidates (gold first,
    then random others), a dev file, and retrieval-free task files: reading comprehension, and true/false
    statements with their passage as provenance (verify)."""
    rng = random.Random(seed)
    people = []
    for i in range(n):
        name = f"{FIRST[i % len(FIRST)]}{LAST[(i // len(FIRST)) % len(LAST)]} {FIRST[(i * 7) % len(FIRST)]}"
        people.append((f"p{i:03d}", name, rng.choice(CITIES), rng.choice(JOBS)))
    passages = [
        {"id": pid, "title": name, "text": f"{name} is a {job}. {name} lives in {city}."}
        for pid, name, city, job in people
    ]
    mined = []
    for i, (pid, name, city, _) in enumerate(people):
        others = [p[0] for p in people if p[0] != pid]
        rng.shuffle(others)
        cands = [pid, *others[: n_candidates - 1]]
        mined.append(
            {"id": f"q{i}", "task": "nq", "prompt": f"Q: Where does {name} live? A:", "answers": [city],
             "gold_passage_ids": [pid], "candidates": cands, "scores": [1.0 / (r + 1) for r in range(len(cands))]}
        )  # fmt: skip
    rc = [
        {"id": f"rc{i}", "input": {"context": f"{name} lives in {city}.", "question": f"Where does {name} live?"},
         "output": [{"answer": city}]}
        for i, (_, name, city, _) in enumerate(people[:20])
    ]  # fmt: skip
    return {
        "passages": write_jsonl(root / "passages.jsonl", passages),
        "verify": write_jsonl(root / "verify.jsonl", verify_rows(passages)),
        "mined": write_jsonl(root / "mined.jsonl", mined),
        "dev": write_jsonl(root / "dev.jsonl", mined[:10]),
        "rc": write_jsonl(root / "rc.jsonl", rc),
        "texts": [f"{p['title']}: {p['text']}" for p in passages],  # type: ignore[dict-item]
    }


def make_model(root: Path, texts: list[str], layers: int = 4, arch: str = "llama") -> Path:
    from imprag.model.tiny import save_tiny

    path = root / f"tiny-{arch}-{layers}"
    if not path.exists():
        save_tiny(path, arch, texts=texts, layers=layers, hidden=32, heads=4, kv_heads=2)
    return path


def small_config(root: Path, corpus: dict, model: Path, **overrides) -> TrainConfig:
    """Two short stages (NCE warmup, then self-distillation with J_gen) over all three data groups."""
    cfg = TrainConfig(
        out=str(root / "out"),
        model=ModelConfig(path=str(model), b=1, t=2, k=2, l_max=24),
        data=DataConfig(
            passages=str(corpus["passages"]),
            retrieval=[SourceConfig(path=str(corpus["mined"]))],
            retrieval_free=[SourceConfig(path=str(corpus["rc"]), task="rc")],
            positives=2,
            hard_negatives=2,
            negative_ranks=[5, 20],
            distill_candidates=4,
            read_passages=2,
            retrieval_ratio=0.5,
            retrieval_free_ratio=0.25,
            plain_text_ratio=0.25,
        ),
        stages=[
            StageConfig(name="warmup", objective="nce", steps=2, lm_weight=0.0, batch_size=8),
            StageConfig(name="distill", objective="distill", steps=2, lm_weight=1.0, batch_size=8),
        ],
        optim=OptimConfig(lr=1e-3, schedule="linear", warmup_steps=1),
        eval=EvalConfig(dev=None),
        progress=False,
    )
    for key, value in overrides.items():
        obj = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            obj = getattr(obj, p)
        setattr(obj, parts[-1], value)
    return cfg


def loss_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_autocast_context_bf16_on_cpu_only_when_asked():
    import torch

    from imprag.train.objective import autocast_context

    cpu = torch.device("cpu")
    for precision, on in (("auto", False), ("fp32", False), ("bf16", True)):
        with autocast_context(cpu, precision):
            assert torch.is_autocast_enabled("cpu") is on
            y = torch.ones(2, 2) @ torch.ones(2, 2)
        assert y.dtype == (torch.bfloat16 if on else torch.float32)
