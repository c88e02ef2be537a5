"""What makes the SmolLM2 reader fit a laptop CPU: bf16 autocast and reading without autograd.

    python benchmarks/cpu_reader.py [--model .cache/smollm2] [--batch 8] [--k 5] [--repeats 3]

Side by side in one run (interleaved, medians), on real Wikipedia passages cut to l_max tokens:
1. decoding one batch (`ImpRAG.generate`, k passages read through layers 0..t, 8 new tokens): fp32 against
   `decode_precision = "bf16"` (autocast; the retrieval vectors stay fp32);
2. one reader training step (J_gen forward + backward over a batch whose prompts read k passages):
   `passage_grad` true against false (the passages' key/value computed without autograd), each in fp32
   and under bf16 autocast;
3. an evaluation's decoding (bf16), 4 batches whose prompts read k passages drawn from a pool of half as
   many as they read (questions and methods share passages): the concatenating reader, the independent
   reader, and the independent reader with a `PassageKVCache` (fresh each repeat).
Ratios are what to read; absolute times drift on a shared machine.
"""

from __future__ import annotations

import argparse
import random
import sys
from contextlib import nullcontext

import torch
from _common import REPO, interleaved, wiki_passages  # type: ignore[import-not-found]

sys.path.insert(0, str(REPO))
from imprag.model.imprag import ImpRAG  # noqa: E402
from imprag.model.passage_cache import PassageKVCache  # noqa: E402
from imprag.passage import passage_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / ".cache" / "smollm2"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--l-max", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = ImpRAG.from_pretrained(args.model, k=args.k, l_max=args.l_max, t=29)
    texts = [passage_text(p) for p in wiki_passages(args.batch * args.k)]
    passages = [texts[i * args.k : (i + 1) * args.k] for i in range(args.batch)]
    prompts = [f"Q: what is said about {p[0].split(':')[0]}? A:" for p in passages]
    answers = ["the passage says so"] * args.batch
    read = model.tokenize_passages(passages)
    ids, mask = model.encode_prompts([p + " " + a for p, a in zip(prompts, answers)], "right", True)
    tokens = int(read.attention_mask.sum()) + int(mask.sum())
    print(f"SmolLM2-135M, b={model.config.b}, t={model.config.t}, batch {args.batch} x k={args.k} passages")
    print(f"{tokens} tokens per batch (passages + prompts), torch threads {torch.get_num_threads()}\n")

    def decode(precision: str):
        def run() -> None:
            model.decode_precision = precision
            model.generate(prompts, passages, max_new_tokens=8)

        return run

    def step(passage_grad: bool, bf16: bool):
        def run() -> None:
            model.lm.zero_grad(set_to_none=True)
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
            with amp:
                logits = model.forward(ids, mask, passages=read, passage_grad=passage_grad).logits
            logits.float().logsumexp(-1).mean().backward()

        return run

    dec = interleaved({"fp32": decode("fp32"), "bf16": decode("bf16")}, args.repeats)
    model.decode_precision = "fp32"
    print("| decoding a batch | s | tokens/s | vs fp32 |\n|---|---:|---:|---:|")
    for name, s in dec.items():
        print(f"| {name} | {s:.2f} | {tokens / s:.0f} | {dec['fp32'] / s:.2f}x |")
    model.lm.train()
    fns = {
        f"passage_grad {g}, {'bf16' if b else 'fp32'}": step(g, b)
        for b in (False, True)
        for g in (True, False)
    }
    tr = interleaved(fns, args.repeats)
    base = tr["passage_grad True, fp32"]
    print("\n| reader training step | s | tokens/s | vs passage_grad True, fp32 |\n|---|---:|---:|---:|")
    for name, s in tr.items():
        print(f"| {name} | {s:.2f} | {tokens / s:.0f} | {base / s:.2f}x |")
    model.lm.eval()
    model.decode_precision = "bf16"
    rng = random.Random(0)
    pool = texts[: max(args.k, args.batch * args.k // 2)]
    batches = [[rng.sample(pool, args.k) for _ in prompts] for _ in range(4)]

    def evaluate(reader: str, cached: bool):
        def run() -> None:
            model.config.reader = reader
            model.passage_cache = PassageKVCache() if cached else None
            for read in batches:
                model.generate(prompts, read, max_new_tokens=8)

        return run

    ev = interleaved(
        {
            "concat": evaluate("concat", False),
            "independent": evaluate("independent", False),
            "independent + PassageKVCache": evaluate("independent", True),
        },
        args.repeats,
    )
    print(f"\n| 4 batches, {len(pool)} distinct passages (bf16) | s | vs concat |\n|---|---:|---:|")
    for name, s in ev.items():
        print(f"| {name} | {s:.2f} | {ev['concat'] / s:.2f}x |")


if __name__ == "__main__":
    main()
