"""`imprag search`: the passages a model's implicit query retrieves for a prompt."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imprag.device import DEVICE_HELP, pick_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt", nargs="+", help="prompt(s) exactly as the model sees them, e.g. 'Q: who wrote Hamlet? A:'"
    )
    parser.add_argument("--model", type=Path, required=True, help="ImpRAG / Hugging Face model folder")
    parser.add_argument("--index", type=Path, required=True, help="index folder made by `imprag index`")
    parser.add_argument("-k", type=int, default=10, help="passages per prompt (default 10)")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per prompt: {prompt, passages: [...]}"
    )
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists to probe (default: the index's)")
    parser.add_argument(
        "--rerank",
        type=int,
        default=None,
        metavar="R",
        help="rescore R FAISS candidates with the exact stored vectors",
    )
    parser.add_argument(
        "--passages", type=Path, default=None, help="the passages file, if it moved since indexing"
    )
    parser.add_argument(
        "--allow-fingerprint-mismatch",
        action="store_true",
        help="search an index built by other weights anyway",
    )
    parser.add_argument(
        "--width", type=int, default=100, help="characters of text shown per passage (default 100)"
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def run(args: argparse.Namespace) -> int:
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
