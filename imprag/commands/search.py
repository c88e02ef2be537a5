"""`imprag search`: the passages a model's implicit query retrieves for a prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from imprag.config_io import option
from imprag.device import DEVICE_HELP, pick_device


@dataclass(kw_only=True)
class Options:
    prompt: list[str] = option(
        help="prompt(s) exactly as the model sees them, e.g. 'Q: who wrote Hamlet? A:'", positional=True
    )
    model: Path = option(help="ImpRAG / Hugging Face model folder")
    index: Path = option(help="index folder made by `imprag index`")
    k: int = option(10, "passages per prompt", flags=("-k",))
    json: bool = option(False, "one JSON object per prompt: {prompt, passages: [...]}")
    nprobe: int | None = option(None, "IVF lists to probe (default: the index's)")
    rerank: int | None = option(None, "rescore R FAISS candidates with the exact stored vectors", metavar="R")
    passages: Path | None = option(None, "the passages file, if it moved since indexing")
    allow_fingerprint_mismatch: bool = option(False, "search an index built by other weights anyway")
    width: int = option(100, "characters of text shown per passage")
    device: str = option("auto", DEVICE_HELP)


def run(args: Options) -> int:
    from imprag.index.faiss_index import Index
    from imprag.model.imprag import ImpRAG

    model = ImpRAG.from_pretrained(args.model, device=pick_device(args.device))
    index = Index.load(
        args.index,
        model=model,
        allow_mismatch=args.allow_fingerprint_mismatch,
        passages=args.passages,
        nprobe=args.nprobe,
    )
    results = index.retrieve(model, args.prompt, k=args.k, rerank=args.rerank)
    for prompt, hits in zip(args.prompt, results):
        if args.json:
            print(json.dumps({"prompt": prompt, "passages": hits}, ensure_ascii=False))
            continue
        if len(args.prompt) > 1:
            print(f"# {prompt}")
        print(f"{'rank':>4}  {'score':>9}  {'id':<14} {'title':<30} text")
        for rank, h in enumerate(hits, start=1):
            text = " ".join(str(h.get("text", "")).split())
            text = text if len(text) <= args.width else text[: args.width - 3] + "..."
            title = str(h.get("title") or "")
            title = title if len(title) <= 30 else title[:27] + "..."
            print(f"{rank:>4}  {h['score']:>9.4f}  {str(h['id']):<14} {title:<30} {text}")
    return 0
