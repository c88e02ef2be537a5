"""The cheap retrieval warmup: layers 0..b-1 frozen, their outputs cached once, layer b's input norm and
q/k projections trained from the cache with every passage of the corpus as a negative.

With any pooling ("content", "mean", "last"), states before RoPE and no per-head q/k norm, a pooled state is linear in
the pooled *normalised* layer-b input: mean_t W (g * n(h_t)) = W (g * mean_t n(h_t)), where n is RMSNorm
without its weight g. So each passage and prompt is cached as one vector u (H,) and a training step is a
few matrix products over all of them: the softmax runs over the whole corpus exactly (global negatives),
and the calibration means are exact too. Shapes: N passages, Q prompts, H hidden size, D = h_k * d.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imprag.errors import UserError
from imprag.model.arch import get
from imprag.model.calibration import FREE, Calibration
from imprag.model.imprag import ImpRAG
from imprag.train.losses import multi_label_nce

log = logging.getLogger(__name__)


def check_cacheable(model: ImpRAG) -> None:
    """The cache holds pooled inputs, which is exact only for a linear retrieval head."""
    attn = get(model.layers[model.config.b], model.spec.attn)
    if model.config.state != "pre_rope" or any(
        n and hasattr(attn, n) for n in (model.spec.q_norm, model.spec.k_norm)
    ):
        raise UserError(
            f"the cached retrieval warmup needs --state pre_rope and no q/k norm ({model.lm.config.model_type}, "
            f"state {model.config.state}); train retrieval with an uncached nce stage instead"
        )


def cache_key(model: ImpRAG) -> str:
    """What the cached inputs depend on: the frozen weights (embeddings, layers 0..b-1), b, l_max, the
    pooling and the state choice."""
    h = hashlib.sha256()
    c = model.config
    h.update(f"{model.lm.config.model_type}|b={c.b}|l_max={c.l_max}|{c.pooling}|{c.state}|{c.k}".encode())
    for module in model.retrieval_modules(query=False)[: c.b + 1]:  # embeddings + layers 0..b-1
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def pooled_inputs(
    model: ImpRAG, input_ids, attention_mask, kind: str, token_index=None, content=None
) -> torch.Tensor:
    """(B, H) float32: layer b's input, RMS-normalised without the norm weight, pooled as the model pools."""
    offset = model.config.prompt_offset if kind == "q" and model.config.state == "post_rope" else 0
    hidden, _ = model._bottom(input_ids, attention_mask, offset)  # (B, T, H)
    norm = get(model.layers[model.config.b], model.spec.input_norm)
    h = hidden.float()
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    n = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    w = model._pool_mask(attention_mask, token_index, content).float()[..., None]  # (B, T, 1)
    return (n * w).sum(1) / w.sum(1).clamp(min=1)


@torch.no_grad()
def build_cache(
    model: ImpRAG,
    texts: list[str],
    kind: str,
    path: Path | None = None,
    batch_size: int = 16,
    desc: str = "",
    progress: bool = True,
) -> torch.Tensor:
    """(N, H) pooled inputs of prompts ("q") or passages ("k"), in chunks saved under `path` (resumable:
    finished chunks are reused; a chunk is written atomically)."""
    from tqdm.auto import tqdm

    chunk = 512
    parts = []
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]  # other texts: other files
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=len(texts), desc=desc or f"cache {kind}", unit="text", dynamic_ncols=True, disable=not progress
    )
    for c in range(0, len(texts), chunk):
        file = path / f"{kind}-{digest}-{c // chunk:05d}.pt" if path is not None else None
        if file is not None and file.exists():
            part = torch.load(file)
            if part.shape[0] == len(texts[c : c + chunk]):
                parts.append(part)
                bar.update(part.shape[0])
                continue
        rows = []
        for s in range(c, min(c + chunk, len(texts)), batch_size):
            batch = texts[s : min(s + batch_size, c + chunk)]
            content = None
            if kind == "q":
                ids, mask, content = model.encode_queries(batch)
            else:
                seqs = [model._truncate_passage(x, model.config.l_max) for x in model._tokenize(batch)]
                ids, mask = model._pad(seqs, "right")
            rows.append(pooled_inputs(model, ids, mask, kind, content=content).cpu())
            bar.update(len(batch))
        part = torch.cat(rows)
        if file is not None:
            tmp = file.with_suffix(".tmp")
            torch.save(part, tmp)
            tmp.replace(file)
        parts.append(part)
    bar.close()
    return torch.cat(parts) if parts else torch.zeros(0, model.lm.config.hidden_size)


class RetrievalHead:
    """Layer b's retrieval path applied to cached pooled inputs: exactly the model's raw states."""

    def __init__(self, model: ImpRAG):
        self.model = model
        layer = model.layers[model.config.b]
        attn = get(layer, model.spec.attn)
        self.norm = get(layer, model.spec.input_norm)
        self.q_proj = get(attn, model.spec.q_proj)
        self.k_proj = get(attn, model.spec.k_proj)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.norm.parameters(), *self.q_proj.parameters(), *self.k_proj.parameters()]

    def states(self, u: torch.Tensor, kind: str) -> torch.Tensor:
        """u (B, H) -> raw pooled states (B, D)."""
        m = self.model
        x = self.norm.weight.float() * u
        if kind == "k":
            return torch.nn.functional.linear(x, self.k_proj.weight.float(), _f(self.k_proj.bias))
        q = torch.nn.functional.linear(x, self.q_proj.weight.float(), _f(self.q_proj.bias))
        g = m.num_heads // m.num_kv_heads
        return q.view(-1, m.num_kv_heads, g, m.head_dim).mean(2).reshape(q.shape[0], -1)


def _f(bias):
    return None if bias is None else bias.float()


@dataclass
class CachedData:
    """Training prompts with their positive passages (indices into the passage cache), plus prompts that
    serve only the calibration of formats the training prompts lack (`extra_*`)."""

    prompt_u: torch.Tensor  # (Q, H)
    keys: list[str]  # (Q,) calibration key of each prompt
    positives: list[list[int]]  # per prompt: rows of passage_u
    passage_u: torch.Tensor  # (N, H)
    extra_u: torch.Tensor | None = None  # (E, H)
    extra_keys: list[str] = field(default_factory=list)


def _key(k: str, mode: str) -> str:
    return k if mode == "template" else FREE


def _group_means(u: torch.Tensor, keys: list[str]) -> dict[str, torch.Tensor]:
    names = sorted(set(keys))
    idx = torch.tensor([names.index(k) for k in keys])
    sums = torch.zeros(len(names), u.shape[1]).index_add_(0, idx, u)
    counts = torch.bincount(idx, minlength=len(names)).clamp(min=1)[:, None]
    return dict(zip(names, sums / counts))


def _input_means(data: CachedData, mode: str) -> dict[str, torch.Tensor]:
    """Per calibration key, the mean pooled input (H,) of its prompts: training prompts, else (formats with
    none) calibration-only prompts; FREE defaults to every training prompt. A state is linear in u, so the
    state of a mean input is the mean state."""
    means = _group_means(data.prompt_u, [_key(k, mode) for k in data.keys])
    if data.extra_u is not None and mode == "template":
        extra = _group_means(data.extra_u, data.extra_keys)
        means.update({k: v for k, v in extra.items() if k not in means})
    means.setdefault(FREE, data.prompt_u.mean(0))
    return means


def cache_calibration(head: RetrievalHead, p: torch.Tensor, u_means: dict[str, torch.Tensor]) -> Calibration:
    """The exact means under the current weights: of the passage states p (N, D), and per key the state of
    its prompts' mean input (`_input_means`, constant while layers below b are frozen)."""
    names = list(u_means)
    q_means = head.states(torch.stack([u_means[k] for k in names]), "q")  # (K, D)
    return Calibration(p.mean(0), dict(zip(names, q_means)))


def calibrated_scores(
    head: RetrievalHead, data: CachedData, rows: torch.Tensor, tau: float, u_means=None
) -> tuple[torch.Tensor, Calibration | None]:
    """Scores (B, N) of training prompts `rows` against every passage, calibrated with the exact means of
    the whole cache, and the Calibration those means make. `u_means`: `_input_means(data, ...)`, when the
    caller has it already."""
    cfg = head.model.config
    p = head.states(data.passage_u, "k")  # (N, D)
    q = head.states(data.prompt_u[rows], "q")  # (B, D)
    cal = None
    if cfg.calibration != "none":
        cal = cache_calibration(head, p, u_means or _input_means(data, cfg.calibration))
        p = p - cal.passage
        q = q - torch.stack([cal.query[_key(data.keys[i], cfg.calibration)] for i in rows.tolist()])
    if cfg.similarity == "cosine":
        p = torch.nn.functional.normalize(p, dim=-1)
        q = torch.nn.functional.normalize(q, dim=-1) / cfg.temperature
    return (q @ p.T) / tau, cal


def train_cached(
    model: ImpRAG,
    data: CachedData,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    tau: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Multi-label NCE of each prompt's positives against all N passages (every other passage is a
    negative), AdamW on layer b's norm and q/k projections only. Returns the loss per step."""
    from tqdm.auto import tqdm

    check_cacheable(model)
    head = RetrievalHead(model)
    params = head.parameters()
    flags = [prm.requires_grad for prm in params]
    for prm in params:
        prm.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = random.Random(seed)
    order: list[int] = []
    N = data.passage_u.shape[0]
    u_means = _input_means(data, model.config.calibration)  # the inputs are fixed: their means too
    losses = []
    bar = tqdm(range(steps), desc="cached warmup", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        if len(order) < batch_size:
            more = list(range(len(data.positives)))
            gen.shuffle(more)
            order += more
        rows, order = order[:batch_size], order[batch_size:]
        scores, _ = calibrated_scores(head, data, torch.tensor(rows), tau, u_means)
        pos = torch.zeros((len(rows), N), dtype=torch.bool)
        for i, r in enumerate(rows):
            pos[i, data.positives[r]] = True
        total, count = multi_label_nce(scores, pos, ~pos)
        loss = total / count.clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if not math.isfinite(losses[-1]):
            raise UserError(f"the cached warmup diverged (loss {losses[-1]}); lower its learning rate")
    for prm, flag in zip(params, flags):
        prm.requires_grad_(flag)
    if model.config.calibration != "none":
        with torch.no_grad():
            model.calibration = cache_calibration(head, head.states(data.passage_u, "k"), u_means)
    return losses


TITLE = "title"  # the calibration key of title pseudo-queries while training


def title_queries(texts: list[str], n: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    """Up to n label-free pseudo-queries from passages read as "Title: text": ("Q: <title> A:", the rows of
    every passage with that title), titles drawn at random (seeded)."""
    from imprag.data.tasks import QA_TEMPLATE

    if n <= 0:
        return []
    by_title: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        head, sep, _ = text[:200].partition(": ")
        if sep and head.strip():
            by_title.setdefault(head.strip(), []).append(i)
    names = sorted(by_title)
    random.Random(seed).shuffle(names)
    return [(QA_TEMPLATE.format(question=t), by_title[t]) for t in names[:n]]


def run_cached_warmup(
    model: ImpRAG, cfg, retrieval: list, passages: dict[str, str], env, out: Path
) -> dict[str, torch.Tensor]:
    """The `cached_warmup` section of `imprag train`: cache (rank 0 writes, the others read), then train.
    Every process runs the same full-batch steps on the same data, so all end with the same weights.
    Returns every passage's search vector under the trained weights ({id: (D,)}), exact by linearity."""
    from imprag.model.calibration import calibration_prompts, template_key

    cw = cfg.cached_warmup
    check_cacheable(model)
    cache = Path(cw.cache_dir) if cw.cache_dir else out / "cache"
    cache = cache / cache_key(model)
    pid_row = {p: i for i, p in enumerate(passages)}
    examples = []
    for ex in (e for src in retrieval for e in src):
        labels = ex.gold if cw.labels == "gold" else ex.candidates[: cfg.data.positives]
        rows = [pid_row[p] for p in labels if p in pid_row]
        if rows:
            examples.append((ex.prompt, rows))
    if not examples:
        raise UserError(f"cached_warmup: no retrieval example has a {cw.labels} passage in data.passages")
    texts = list(passages.values())
    titles = title_queries(texts, cw.title_queries, cfg.seed)
    extra = calibration_prompts(texts[:: max(1, len(texts) // 2048)], per_template=64, seed=cfg.seed)
    extra_texts = [p for v in extra.values() for p in v]

    def build(show: bool):
        def one(rows: list[str], kind: str, name: str) -> torch.Tensor:
            return build_cache(model, rows, kind, cache / name, desc=f"cache {name}", progress=show)

        return (
            one(texts, "k", "passages"),
            one([p for p, _ in examples], "q", "prompts"),
            one(extra_texts, "q", "calibration"),
            one([p for p, _ in titles], "q", "titles"),
        )

    show = cfg.progress
    if env.is_main:  # the others wait, then read the finished chunks
        p_u, q_u, e_u, t_u = build(show)
    env.barrier()
    if not env.is_main:
        p_u, q_u, e_u, t_u = build(False)
    # the real examples repeated so that title pseudo-queries make up about `title_share` of the rows
    share = cw.title_share
    reps = max(1, round(len(titles) * (1 - share) / (share * len(examples)))) if titles else 1
    data = CachedData(
        torch.cat([q_u] * reps + [t_u]),
        [template_key(p) for p, _ in examples] * reps + [TITLE] * len(titles),
        [r for _, r in examples] * reps + [r for _, r in titles],
        p_u,
        e_u,
        [k for k, v in extra.items() for _ in v],
    )
    losses = train_cached(
        model,
        data,
        cw.steps,
        cw.batch_size,
        cw.lr,
        cw.weight_decay,
        cfg.loss.nce_tau,
        cfg.seed,
        cfg.progress and env.is_main,
    )
    log.info(
        "cached warmup: %d steps over %d prompts and %d passages, loss %.4f -> %.4f",
        cw.steps,
        len(examples),
        len(texts),
        losses[0],
        losses[-1],
    )
    if model.calibration is not None:
        model.calibration.query.pop(TITLE, None)  # a training device, not a prompt format
    with torch.no_grad():
        vectors = model.finish_vectors(RetrievalHead(model).states(p_u, "k"), "k").float().cpu()
    return dict(zip(passages, vectors))
