"""`imprag ask`: answer prompts with the passages the model's own implicit query retrieves.

    imprag ask "Q: who wrote Hamlet? A:" --model ckpt --index wiki-index [-k 10] [--max-tokens 32]

Prints each answer, then the retrieved passages (rank, score, id, title; --show-passages adds their
text). --json prints one object per prompt: {prompt, answer, finish_reason, prompt_tokens,
completion_tokens, passages: [{rank, id, title, score[, text]}]}. The prompt is used verbatim unless
--template gives a text with {prompt} in it (e.g. 'Q: {prompt} A:').
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from imprag.device import DEVICE_HELP, pick_device
from imprag.errors import UserError
from imprag.model.window import context_window, prompt_budget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt",
        nargs="+",
        help="prompt(s), e.g. 'Q: who wrote Hamlet? A:' (several are answered as one batch)",
    )
    parser.add_argument("--model", type=Path, required=True, help="ImpRAG / Hugging Face model folder")
    parser.add_argument(
        "--index", type=Path, required=True, help="index folder made by `imprag index` with this model"
    )
    parser.add_argument(
        "-k",
        type=int,
        default=None,
        help="passages read per prompt, 0 = closed book (default: the model's k)",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="most answer tokens (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument(
        "--stop", action="append", default=None, help="stop string (repeatable; default: none, EOS stops)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument(
        "--template", default=None, help="wrap each prompt: a text with {prompt}, e.g. 'Q: {prompt} A:'"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt")
    parser.add_argument("--show-passages", action="store_true", help="print each passage's text too")
    parser.add_argument(
        "--width", type=int, default=100, help="characters per passage text line (default 100)"
    )
    parser.add_argument(
        "--passages", type=Path, default=None, help="the passages file, if it moved since indexing"
    )
    parser.add_argument(
        "--allow-fingerprint-mismatch", action="store_true", help="use an index built by other weights anyway"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often fastest for small models on busy CPUs)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def run(args: argparse.Namespace) -> int:
    import torch

    from imprag import rag
    from imprag.index.faiss_index import Index
    from imprag.model.imprag import ImpRAG

    if args.max_tokens < 1:
        raise UserError(f"--max-tokens {args.max_tokens}: must be at least 1")
    if args.template is not None and "{prompt}" not in args.template:
        raise UserError(f"--template {args.template!r}: must contain {{prompt}}, e.g. 'Q: {{prompt}} A:'")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError(
            f"--temperature {args.temperature} --top-p {args.top_p}: need temperature >= 0 and 0 < top-p <= 1"
        )
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    model = ImpRAG.from_pretrained(args.model, device=pick_device(args.device))
    k_model = model.config.k
    k = model.config.check_reads(k_model if args.k is None else args.k)
    window = context_window(model.lm.config)
    prompt_budget(k_model, model.config.l_max, window, args.max_tokens, k > 0, "--max-tokens")
    index = Index.load(
        args.index, model=model, allow_mismatch=args.allow_fingerprint_mismatch, passages=args.passages
    )
    prompts = [args.template.replace("{prompt}", p) if args.template else p for p in args.prompt]
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(args.seed)
    options = dict(
        max_new_tokens=args.max_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        top_p=args.top_p,
        stop=args.stop,
        generator=generator,
    )
    if k == 0:
        answers = [rag.Answer(g, []) for g in model.generate(prompts, None, **options)]
    else:
        answers = rag.answer(model, index, prompts, k=k, **options)
    for i, (prompt, a) in enumerate(zip(prompts, answers)):
        passages = [
            {"rank": r, "id": p.get("id"), "title": p.get("title"), "score": p.get("score")}
            | ({"text": p.get("text")} if args.show_passages else {})
            for r, p in enumerate(a.passages, start=1)
        ]
        if args.json:
            g = a.generation
            record = {
                "prompt": prompt,
                "answer": a.text,
                "finish_reason": g.finish_reason,
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": len(g.token_ids),
                "passages": passages,
            }
            print(json.dumps(record, ensure_ascii=False))
            continue
        if i:
            print()
        if len(prompts) > 1:
            print(f"# {prompt}")
        print(a.text)
        if not passages:
            print("\n(no passages: closed book)")
            continue
        print(f"\n{'rank':>4}  {'score':>9}  {'id':<14} title")
        for p, rec in zip(passages, a.passages):
            print(f"{p['rank']:>4}  {p['score']:>9.4f}  {str(p['id']):<14} {p['title'] or ''}")
            if args.show_passages:
                body = " ".join(str(rec.get("text") or "").split())
                print(textwrap.indent(textwrap.fill(body, width=max(20, args.width)), " " * 6))
    return 0
