"""`imprag ask`: answer prompts with the passages the model's own implicit query retrieves.

    imprag ask "Q: who wrote Hamlet? A:" --model ckpt --index wiki-index [-k 10] [--max-tokens 32]

Prints each answer, then the retrieved passages (rank, score, id, title; --show-passages adds their
text). --json prints one object per prompt: {prompt, answer, finish_reason, prompt_tokens,
completion_tokens, passages: [{rank, id, title, score[, text]}]}. The prompt is used verbatim unless
--template gives a text with {prompt} in it (e.g. 'Q: {prompt} A:').
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from imprag.config_io import option
from imprag.device import DEVICE_HELP, THREADS_HELP, pick_device, set_threads
from imprag.errors import UserError
from imprag.model.window import context_window, prompt_budget


@dataclass(kw_only=True)
class Options:
    prompt: list[str] = option(
        help="prompt(s), e.g. 'Q: who wrote Hamlet? A:' (several are answered as one batch)", positional=True
    )
    model: Path = option(help="ImpRAG / Hugging Face model folder")
    index: Path = option(help="index folder made by `imprag index` with this model")
    k: int | None = option(
        None, "passages read per prompt, 0 = closed book (default: the model's k)", flags=("-k",)
    )
    max_tokens: int = option(64, "most answer tokens")
    temperature: float = option(0.0, "0 = greedy (default); > 0 samples")
    top_p: float = option(1.0, "nucleus sampling mass")
    stop: list[str] | None = option(None, "stop string (repeatable; default: none, EOS stops)", repeat=True)
    seed: int | None = option(None, "seed for sampling")
    template: str | None = option(None, "wrap each prompt: a text with {prompt}, e.g. 'Q: {prompt} A:'")
    json: bool = option(False, "one JSON object per prompt")
    show_passages: bool = option(False, "print each passage's text too")
    width: int = option(100, "characters per passage text line")
    passages: Path | None = option(None, "the passages file, if it moved since indexing")
    allow_fingerprint_mismatch: bool = option(False, "use an index built by other weights anyway")
    threads: int | None = option(None, THREADS_HELP)
    device: str = option("auto", DEVICE_HELP)


def run(args: Options) -> int:
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
    set_threads(args.threads)
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
