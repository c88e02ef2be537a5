"""Retrieval states on a real backbone: pooling x similarity x calibration, untrained and after the cached
warmup (layer b's norm + q/k projections trained on cached layer-b inputs, softmax over every passage).

    python benchmarks/retrieval_ablation.py --model models/smollm2 --world world [--steps 300]
    python benchmarks/retrieval_ablation.py --model models/smollm2 --real ../shared/data [--steps 1000]

The demo world: nq train questions with their gold passage as the label, recall@1/5/10 of the gold passage
on nq dev and on the unseen formats' test splits (each prompt in its own template). Real data: nq/train
questions, gold-passage recall on nq/dev. Caches (layer-b inputs) go to --cache and are reused.
Prints one markdown row per setting and state (untrained, trained). Each cell: recall@1/5/10 with the
query mean taken from that set's own prompts (what `imprag eval` does by default); for unseen formats
with template calibration, R@5 with the stored means follows in parentheses: (corpus-filled template
prompts, the training questions' mean).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from imprag.data.kilt import load_examples
from imprag.model.calibration import FREE, Calibration, calibration_prompts, template_key
from imprag.model.imprag import ImpRAG
from imprag.passage import read_passages
from imprag.train.retrieval_cache import CachedData, RetrievalHead, build_cache, train_cached

UNSEEN = ("trex", "zsre", "aida", "fever")


def gold_rows(examples, pid_row: dict[str, int]) -> list[list[int]]:
    return [[pid_row[p.passage_id] for p in ex.provenance if p.passage_id in pid_row] for ex in examples]


def recall(scores: torch.Tensor, golds: list[list[int]], ks=(1, 5, 10)) -> dict[int, float]:
    top = scores.topk(max(ks), dim=-1).indices.tolist()
    keep = [i for i, g in enumerate(golds) if g]
    return {k: sum(bool(set(top[i][:k]) & set(golds[i])) for i in keep) / max(1, len(keep)) for k in ks}


def answer_recall(scores: torch.Tensor, examples, texts: list[str], ks=(1, 5, 10)) -> dict[int, float]:
    """Share of examples with a gold answer inside one of the top-k passages (word-boundary match)."""
    from imprag.eval.metrics import has_answer

    top = scores.topk(max(ks), dim=-1).indices.tolist()
    first = [
        next((j for j, r in enumerate(row) if has_answer(texts[r], ex.answers)), None)
        for row, ex in zip(top, examples)
    ]
    return {k: sum(f is not None and f < k for f in first) / max(1, len(examples)) for k in ks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--world", type=Path, help="a demo world folder (imprag world)")
    src.add_argument("--real", type=Path, help="../shared/data")
    ap.add_argument("--b", type=int, default=7)
    ap.add_argument("--l-max", type=int, default=None, help="passage tokens (default: 96 world, 128 real)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dev-limit", type=int, default=200)
    ap.add_argument(
        "--mined",
        type=Path,
        default=None,
        help="train on pseudo labels: an `imprag mine` file (default: gold)",
    )
    ap.add_argument("--positives", type=int, default=1, help="top mined candidates used as positives")
    ap.add_argument("--cache", type=Path, default=Path("runs/ablation-cache"))
    ap.add_argument("--settings", default="all", help="'all' or comma list of pooling/similarity/calibration")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.world:
        ids, texts = read_passages(args.world / "passages.jsonl")
        train = load_examples(args.world / "tasks/nq/train.jsonl", "nq")
        evals = {"nq dev": load_examples(args.world / "tasks/nq/dev.jsonl", "nq")[: args.dev_limit]}
        for t in UNSEEN:
            evals[f"{t} test"] = load_examples(args.world / f"tasks/{t}/test.jsonl", t)[: args.dev_limit]
        l_max = args.l_max or 96
    else:
        ids, texts = read_passages(args.real / "wiki/passages.jsonl")
        train = load_examples(args.real / "nq/train.jsonl", "nq")
        evals = {"nq dev": load_examples(args.real / "nq/dev.jsonl", "nq")[: args.dev_limit]}
        l_max = args.l_max or 128
    pid_row = {p: i for i, p in enumerate(ids)}
    cache = args.cache / ("world" if args.world else "real") / f"b{args.b}-l{l_max}"

    settings = [
        (p, s, c)
        for p in ("last", "mean", "content")
        for s in ("dot", "cosine")
        for c in ("none", "template")
    ]
    if args.settings != "all":
        settings = [tuple(x.split("/")) for x in args.settings.split(",")]  # type: ignore[misc]

    base = ImpRAG.from_pretrained(args.model, b=args.b, l_max=l_max)
    initial = {n: p.detach().clone() for n, p in base.lm.named_parameters()}
    cal_prompts = calibration_prompts(texts, per_template=64)
    print(f"| setting | trained | {' | '.join(f'{n} R@1/5/10' for n in evals)} |")
    print(f"|---|---|{'---|' * len(evals)}")
    for pooling, sim, cal_mode in settings:
        base.lm.load_state_dict(initial, strict=False)
        m = ImpRAG(base.lm, base.tokenizer, base.config)
        m.config.pooling, m.config.similarity, m.config.calibration = pooling, sim, cal_mode
        t0 = time.perf_counter()
        tag = cache / pooling
        p_tag = cache / ("last" if pooling == "last" else "mean")  # passages pool alike for mean and content
        p_u = build_cache(m, texts, "k", p_tag / "passages", desc="cache passages")
        q_u = build_cache(m, [e.prompt for e in train], "q", tag / "train")
        e_u = {
            n: build_cache(m, [e.prompt for e in ex], "q", tag / n.replace(" ", "-"))
            for n, ex in evals.items()
        }
        c_u = {k: build_cache(m, v, "q", tag / f"cal-{k}") for k, v in cal_prompts.items()}
        t_cache = time.perf_counter() - t0
        keys = [template_key(e.prompt) for e in train]
        golds = gold_rows(train, pid_row)
        if args.mined is not None:  # pseudo labels: the retriever's top candidates, by prompt
            mined = {
                r["prompt"]: r["candidates"][: args.positives] for r in map(json.loads, args.mined.open())
            }
            golds = [[pid_row[p] for p in mined.get(e.prompt, []) if p in pid_row] for e in train]
        keep = [i for i, g in enumerate(golds) if g]
        data = CachedData(q_u[keep], [keys[i] for i in keep], [golds[i] for i in keep], p_u)
        for trained in (False, True):
            t1 = time.perf_counter()
            if trained:
                train_cached(m, data, args.steps, args.batch, args.lr, progress=False)
            t_train = time.perf_counter() - t1
            head = RetrievalHead(m)
            cells = []
            with torch.no_grad():
                P = head.states(p_u, "k")
                train_mean = head.states(data.prompt_u, "q").mean(0)
                stored = Calibration(P.mean(0), {k: head.states(u, "q").mean(0) for k, u in c_u.items()})
                stored.query["qa"] = stored.query[FREE] = train_mean
                m.calibration = stored
                Pv = m.finish_vectors(P, "k")
                for n, ex in evals.items():
                    gold = gold_rows(ex, pid_row)
                    Q = head.states(e_u[n], "q")
                    keys = [template_key(e.prompt) for e in ex]
                    # the eval default: each format's query mean from its own prompts (label-free)
                    m.calibration = Calibration(stored.passage, {FREE: Q.mean(0)})
                    r = recall(m.finish_vectors(Q, "q", [FREE] * len(ex)) @ Pv.T, gold)
                    cell = "/".join(f"{r[k]:.3f}" for k in (1, 5, 10))
                    if args.real:  # and answer recall, the measure on real data
                        ra = answer_recall(m.finish_vectors(Q, "q", [FREE] * len(ex)) @ Pv.T, ex, texts)
                        cell += " (answer " + "/".join(f"{ra[k]:.3f}" for k in (1, 5, 10)) + ")"
                    if (
                        cal_mode == "template" and keys[0] != "qa"
                    ):  # R@5 with stored means: corpus-filled, training
                        m.calibration = stored
                        r_st = recall(m.finish_vectors(Q, "q", keys) @ Pv.T, gold)[5]
                        r_tr = recall(m.finish_vectors(Q, "q", [FREE] * len(ex)) @ Pv.T, gold)[5]
                        cell += f" ({r_st:.3f}, {r_tr:.3f})"
                    cells.append(cell)
                m.calibration = stored
            when = f"{args.steps} steps, {t_train:.0f} s" if trained else f"no (cache {t_cache:.0f} s)"
            print(f"| {pooling}/{sim}/{cal_mode} | {when} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
