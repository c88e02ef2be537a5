"""Which layers must see the passages for a model to read them? Teacher-forced NLL per token of the gold
answer of a world's test questions, read five ways with one model:

    no passage                    the plain model
    gold, layers b..t             ImpRAG's reader: the gold passage's key/value in layers b..t, for each t
    random, layers b..t           a random passage there instead (what reading is worth: gold vs random)
    gold, in context              the gold passage prepended to the prompt (RA-IT), plain attention
    random, in context

    python benchmarks/reader_layers.py --model .cache/smollm2 --t 21 29      # CPU: 10.5 min (1 thread, busy machine)
    python benchmarks/reader_layers.py --model runs/demo/train/final          # a trained model, its own t

The world is generated (small: 1,500 entities, seed 0, as `imprag demo` makes it) unless --world names one.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from imprag.data.kilt import load_examples
from imprag.demo.world import generate_world
from imprag.eval.methods import ra_it_prompt
from imprag.io import iter_jsonl
from imprag.model.imprag import ImpRAG
from imprag.passage import passage_text
from imprag.train.collate import Collator
from imprag.train.losses import response_nll


def answer_nll(model: ImpRAG, prompts, answers, passages, batch_size: int) -> float:
    """Mean NLL per answer token; `passages`: one text per prompt read through layers b..t, or None."""
    collator = Collator(model.tokenizer, 512, 32, 128)
    total, count = 0.0, 0
    for s in range(0, len(prompts), batch_size):
        batch = collator.sequences(prompts[s : s + batch_size], answers[s : s + batch_size])
        read = (
            None if passages is None else model.tokenize_passages([[p] for p in passages[s : s + batch_size]])
        )
        with torch.no_grad():
            logits = model.forward(batch.input_ids, batch.attention_mask, passages=read).logits
        nll, n = response_nll(logits, batch.labels)
        total, count = total + float(nll), count + int(n)
    return total / max(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (imprag.json gives b and t)")
    ap.add_argument(
        "--t", type=int, nargs="*", default=[], help="reader depths to compare (default: the model's)"
    )
    ap.add_argument("--world", type=Path, help="an `imprag world` folder (default: generate the small world)")
    ap.add_argument("--tasks", nargs="*", default=["nq", "simpleqa"])
    ap.add_argument("--limit", type=int, default=160, help="test questions per task")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        world = args.world
        if world is None:
            world = Path(tmp) / "world"
            generate_world(world, 0, 1500)
        records = {str(rec["id"]): rec for _, rec in iter_jsonl(world / "passages.jsonl")}
        text = {pid: passage_text(rec) for pid, rec in records.items()}
        ids = sorted(text)
        rows = []
        # one model per reader depth, loaded once for every task
        models = {t: ImpRAG.from_pretrained(args.model, t=t) for t in args.t or [None]}
        for task in args.tasks:
            examples = load_examples(world / "tasks" / task / "test.jsonl", task, limit=args.limit)
            prompts = [e.prompt for e in examples]
            answers = [e.answers[0] for e in examples]
            gold = [str(e.provenance[0].passage_id) for e in examples]
            rng = random.Random(0)
            other = [rng.choice([x for x in ids if x != g]) for g in gold]
            cells: dict[str, float] = {}
            for i, model in enumerate(models.values()):
                b, depth = model.config.b, model.config.t
                start = time.perf_counter()
                if i == 0:  # the reads that do not depend on t
                    cells["no passage"] = answer_nll(model, prompts, answers, None, args.batch_size)
                    for name, pick in (("gold", gold), ("random", other)):
                        contexts = [ra_it_prompt([records[x]], p) for x, p in zip(pick, prompts)]
                        cells[f"{name}, in context"] = answer_nll(
                            model, contexts, answers, None, args.batch_size
                        )
                cells[f"gold, layers {b}..{depth}"] = answer_nll(
                    model, prompts, answers, [text[g] for g in gold], args.batch_size
                )
                cells[f"random, layers {b}..{depth}"] = answer_nll(
                    model, prompts, answers, [text[o] for o in other], args.batch_size
                )
                print(f"{task} t={depth}: {time.perf_counter() - start:.0f} s", flush=True)
            rows.append((task, cells))

    print(
        f"\nmodel {args.model}; NLL per gold-answer token, {args.limit} test questions per task (lower is better)\n"
    )
    names = list(rows[0][1])
    print("| read | " + " | ".join(task for task, _ in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{cells[name]:.3f}" for _, cells in rows) + " |")


if __name__ == "__main__":
    main()
