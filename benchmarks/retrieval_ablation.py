"""Retrieval states on a real backbone: pooling x similarity x calibration, untrained and after the cached
warmup (layer b's norm + q/k projections trained on cached layer-b inputs, softmax over every passage).

    python benchmarks/retrieval_ablation.py --model models/smollm2 --world world [--steps 300]
    python benchmarks/retrieval_ablation.py --model models/smollm2 --real ../shared/data [--steps 1000]

The demo world: nq train questions with their gold passage as the label, recall@1/5/10 of the gold passage
on nq dev and on the unseen formats' test splits (each prompt in its own template). Real data: nq/train
questions, gold-passage recall on nq/dev. Caches (layer-b inputs) go to --cache and are reused.
Prints one table row per setting; CPU seconds per phase are printed as they happen.
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
from imprag.passage import passage_text
from imprag.train.retrieval_cache import CachedData, RetrievalHead, build_cache, train_cached

UNSEEN = ("trex", "zsre", "aida", "fever")


def load_passages(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.open()]
    return [r["id"] for r in rows], [passage_text(r) for r in rows]


def gold_rows(examples, pid_row: dict[str, int]) -> list[list[int]]:
    return [[pid_row[p.passage_id] for p in ex.provenance if p.passage_id in pid_row] for ex in examples]


def recall(scores: torch.Tensor, golds: list[list[int]], ks=(1, 5, 10)) -> dict[int, float]:
    top = scores.topk(max(ks), dim=-1).indices.tolist()
    keep = [i for i, g in enumerate(golds) if g]
    return {k: sum(bool(set(top[i][:k]) & set(golds[i])) for i in keep) / max(1, len(keep)) for k in ks}


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
    ap.add_argument("--cache", type=Path, default=Path("runs/ablation-cache"))
    ap.add_argument("--settings", default="all", help="'all' or comma list of pooling/similarity/calibration")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.world:
        ids, texts = load_passages(args.world / "passages.jsonl")
        train = load_examples(args.world / "tasks/nq/train.jsonl", "nq")
        evals = {"nq dev": load_examples(args.world / "tasks/nq/dev.jsonl", "nq")[: args.dev_limit]}
        for t in UNSEEN:
            evals[f"{t} test"] = load_examples(args.world / f"tasks/{t}/test.jsonl", t)[: args.dev_limit]
        l_max = args.l_max or 96
    else:
        ids, texts = load_passages(args.real / "wiki/passages.jsonl")
        train = load_examples(args.real / "nq/train.jsonl", "nq")
        evals = {"nq dev": load_examples(args.real / "nq/dev.jsonl", "nq")[: args.dev_limit]}
        l_max = args.l_max or 128
    pid_row = {p: i for i, p in enumerate(ids)}
    cache = args.cache / ("world" if args.world else "real") / f"b{args.b}-l{l_max}"

    settings = [(p, s, c) for p in ("last", "mean") for s in ("dot", "cosine") for c in ("none", "template")]
    if args.settings != "all":
        settings = [tuple(x.split("/")) for x in args.settings.split(",")]  # type: ignore[misc]

    base = ImpRAG.from_pretrained(args.model, b=args.b, l_max=l_max)
    initial = {n: p.detach().clone() for n, p in base.lm.named_parameters()}
    cal_prompts = calibration_prompts(texts, per_template=128)
    print(f"| setting | trained | {' | '.join(f'{n} R@1/5/10' for n in evals)} |")
    for pooling, sim, cal_mode in settings:
        base.lm.load_state_dict(initial, strict=False)
        m = ImpRAG(base.lm, base.tokenizer, base.config)
        m.config.pooling, m.config.similarity, m.config.calibration = pooling, sim, cal_mode
        t0 = time.perf_counter()
        tag = f"{pooling}"
        p_u = build_cache(m, texts, "k", cache / tag / "passages", desc="cache passages")
        q_u = build_cache(m, [e.prompt for e in train], "q", cache / tag / "train")
        e_u = {
            n: build_cache(m, [e.prompt for e in ex], "q", cache / tag / n.replace(" ", "-"))
            for n, ex in evals.items()
        }
        c_u = {k: build_cache(m, v, "q", cache / tag / f"cal-{k}") for k, v in cal_prompts.items()}
        t_cache = time.perf_counter() - t0
        data = CachedData(q_u, [template_key(e.prompt) for e in train], gold_rows(train, pid_row), p_u)
        keep = [i for i, g in enumerate(data.positives) if g]
        data = CachedData(q_u[keep], [data.keys[i] for i in keep], [data.positives[i] for i in keep], p_u)
        for trained in (False, True):
            t1 = time.perf_counter()
            if trained:
                train_cached(m, data, args.steps, args.batch, args.lr, progress=False)
            t_train = time.perf_counter() - t1
            head = RetrievalHead(m)
            with torch.no_grad():
                P = head.states(p_u, "k")
                cal = Calibration(P.mean(0), {k: head.states(u, "q").mean(0) for k, u in c_u.items()})
                cal.query["qa"] = head.states(q_u, "q").mean(0)  # the training questions' mean
                m.calibration = cal
                Pv = m.finish_vectors(P, "k")
                cells = []
                for n, ex in evals.items():
                    keys = [template_key(e.prompt) for e in ex]
                    Q = head.states(e_u[n], "q")
                    r = recall(m.finish_vectors(Q, "q", keys) @ Pv.T, gold_rows(ex, pid_row))
                    cell = "/".join(f"{r[k]:.3f}" for k in (1, 5, 10))
                    if (
                        cal_mode == "template" and n != "nq dev"
                    ):  # reference: the format's own test-prompt mean
                        own = Calibration(cal.passage, {FREE: Q.mean(0)})
                        m.calibration = own
                        r2 = recall(
                            m.finish_vectors(Q, "q", [FREE] * len(keys)) @ Pv.T, gold_rows(ex, pid_row)
                        )
                        m.calibration = cal
                        cell += f" (own {r2[5]:.3f})"
                    cells.append(cell)
            print(
                f"| {pooling}/{sim}/{cal_mode} | {f'{args.steps} steps, {t_train:.0f}s' if trained else f'no (cache {t_cache:.0f}s)'} | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
