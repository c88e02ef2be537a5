"""Reader and indexing speed of ImpRAG vs the same model reading passages in its context.

    python benchmarks/model_speed.py [--model .cache/smollm2] [--k 10] [--repeats 3]

1. Time to first token for one prompt with k passages of ~l_max tokens: ImpRAG's reader (passages through
   layers 0..t only, prompt attends to them in b..t) vs the RA-IT baseline (passages prepended in the
   context, whole model). Aim: ratio close to (t+1)/N.
2. Decode tokens/s after the first token, both ways.
3. Passage embedding throughput (layers 0..b-1 + layer b's key projection) vs a full forward over the same
   batches. Aim: ratio close to N/(b+1).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import REPO, interleaved, wiki_passages  # type: ignore[import-not-found]

sys.path.insert(0, str(REPO))
from imprag.model.imprag import ImpRAG  # noqa: E402
from imprag.passage import passage_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / ".cache" / "smollm2"))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--embed-passages", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    m = ImpRAG.from_pretrained(args.model)
    cfg, N = m.config, m.num_layers
    docs = [passage_text(p) for p in wiki_passages(max(args.k, args.embed_passages))]
    passages = docs[: args.k]
    prompt = "Q: who got the first nobel prize in physics? A:"
    in_context = "\n\n".join(passages) + "\n\n" + prompt
    n_passage_tokens = sum(min(len(x), cfg.l_max) for x in m._tokenize(passages))
    print(
        f"model {args.model}: N={N} b={cfg.b} t={cfg.t} l_max={cfg.l_max}; {args.k} passages, {n_passage_tokens} tokens"
    )
    print(f"torch threads: {torch.get_num_threads()}")

    def imprag_first():
        m.generate([prompt], passages=[passages], max_new_tokens=1)

    def baseline_first():
        m.generate([in_context], max_new_tokens=1)

    ttft = interleaved({"imprag": imprag_first, "in-context": baseline_first}, args.repeats)
    print(
        f"time to first token: imprag {ttft['imprag']:.3f} s, in-context {ttft['in-context']:.3f} s, "
        f"ratio {ttft['imprag'] / ttft['in-context']:.2f} (aim (t+1)/N = {(cfg.t + 1) / N:.2f})"
    )

    def decode_rate(pr, ps) -> float:
        """Tokens/s of the steps after the first (the stream yields once per decoded token)."""
        stamps = [
            time.perf_counter()
            for _ in m.generate_stream([pr], passages=ps, max_new_tokens=args.decode_tokens)
        ]
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")

    story = " Write a long story about the history of physics prizes."
    rates = {
        "imprag": decode_rate(prompt + story, [passages]),
        "in-context": decode_rate(in_context + story, None),
    }
    print(
        f"decode tokens/s after the first: imprag {rates['imprag']:.1f}, in-context {rates['in-context']:.1f}"
    )

    batch = docs[: args.embed_passages]

    def embed():
        m.embed_passages(batch, batch_size=32)

    @torch.no_grad()
    def full_forward():
        for s in range(0, len(batch), 32):
            seqs = [x[: cfg.l_max] for x in m._tokenize(batch[s : s + 32])]
            ids, mask = m._pad(seqs, "right")
            m.lm(input_ids=ids, attention_mask=mask)

    emb = interleaved({"bottom": embed, "full": full_forward}, args.repeats)
    print(
        f"passage embedding: bottom layers {len(batch) / emb['bottom']:.1f} passages/s, full forward "
        f"{len(batch) / emb['full']:.1f} passages/s, speed-up {emb['full'] / emb['bottom']:.2f}x "
        f"(aim N/(b+1) = {N / (cfg.b + 1):.2f})"
    )


if __name__ == "__main__":
    main()
