"""The loss of one micro-batch: J = w_lm * J_gen + lambda * J_ret, as an nn.Module so that DDP / FSDP
wrap it (the ImpRAG model is not an nn.Module; its HF `lm` is this module's only child).

Every process receives the same global micro-batch plan and computes its own slice [lo, hi). Each loss is
normalised by a *global* count (tokens, queries, positive pairs) and multiplied by the world size, so the
data-parallel gradient average equals the single-process gradient of the global batch. Under FSDP every
process must call the same modules in the same order: a process whose slice lacks a kind of example the
global batch has runs the same call on a one-row dummy and multiplies its result by zero.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import torch
from torch import nn

from imprag.model.calibration import template_key
from imprag.model.imprag import ImpRAG
from imprag.train.collate import Collator
from imprag.train.config import StageConfig, TrainConfig
from imprag.train.data import LMExample, RetrievalExample, Slot
from imprag.train.distributed import DistEnv
from imprag.train.losses import distillation_kl, multi_label_nce, response_mean_logp, response_nll


class TrainObjective(nn.Module):
    def __init__(
        self, model: ImpRAG, config: TrainConfig, collator: Collator, passages: dict[str, str], env: DistEnv
    ):
        super().__init__()
        self.imprag = model  # registered child: its LM's parameters are what DDP / FSDP see
        self.cfg = config
        self.collator = collator
        self.passages = passages
        self.env = env
        self._dummy_pid = next(iter(passages)) if passages else None
        self._pids = list(passages)  # distractors of rows that read their provenance

    # ------------------------------------------------------------------ helpers
    @property
    def read_passages(self) -> int:
        k = self.imprag.config.k
        n = self.cfg.data.read_passages
        return k if n is None else min(n, k)

    def _dummy_retrieval(self) -> RetrievalExample:
        assert self._dummy_pid is not None
        return RetrievalExample("dummy", "nq", ".", ".", [self._dummy_pid])

    def _passage_inputs(self, texts: list[str]):
        """One passage per row (B, l): for passage vectors."""
        p = self.imprag.tokenize_passages([[t] for t in texts], mode="concat")
        return p.input_ids, p.attention_mask

    # ------------------------------------------------------------------ forward
    def forward(self, micro: list[Slot], lo: int, hi: int, stage: StageConfig) -> dict[str, torch.Tensor]:
        env, m = self.env, self.imprag
        W = env.world_size
        per = hi - lo
        bounds = [(r * per, (r + 1) * per) for r in range(W)]
        local = micro[lo:hi]
        loc_ret = [s for s in local if s.is_retrieval]
        loc_lm = [s for s in local if not s.is_retrieval and not s.reads]
        loc_read = [s for s in local if s.reads]
        ret_sizes = [sum(s.is_retrieval for s in micro[a:b]) for a, b in bounds]
        n_ret_global = sum(ret_sizes)
        read_global = sum(s.reads for s in micro)
        lm_global = len(micro) - n_ret_global - read_global
        lm_on = stage.lm_weight > 0
        ret_on = stage.objective in ("nce", "distill") and stage.retrieval_weight > 0 and n_ret_global > 0
        device = m.device
        zero = torch.zeros((), device=device)
        total = zero
        parts: dict[str, torch.Tensor] = {}
        tokens = 0
        qvec = None

        if lm_on:
            nll, count = zero, zero
            if lm_global:
                rows = [s.example for s in loc_lm]
                dummy = not rows
                if dummy:
                    rows = [LMExample("dummy", "lm", "", ".", plain=True)]
                lm_rows = [r for r in rows if isinstance(r, LMExample)]
                batch = self.collator.sequences(
                    [r.prompt for r in lm_rows], [r.response for r in lm_rows], [r.plain for r in lm_rows]
                )
                logits = m.forward(batch.input_ids.to(device), batch.attention_mask.to(device)).logits
                s, c = response_nll(logits, batch.labels.to(device))
                if dummy:
                    s, c = s * 0.0, c * 0
                else:
                    tokens += batch.tokens
                nll, count = nll + s, count + c
            if n_ret_global:
                rows_r = [s.example for s in loc_ret]
                dummy = not rows_r
                if dummy:
                    rows_r = [self._dummy_retrieval()]
                batch = self.collator.sequences([r.prompt for r in rows_r], [r.answer for r in rows_r])  # type: ignore[union-attr]
                passages = None
                if self.read_passages > 0:
                    texts = [[self.passages[c] for c in r.candidates[: self.read_passages]] for r in rows_r]  # type: ignore[union-attr]
                    passages = m.tokenize_passages(texts).to(device)
                    if not dummy:
                        tokens += int(passages.attention_mask.sum())
                out = m.forward(
                    batch.input_ids.to(device),
                    batch.attention_mask.to(device),
                    passages=passages,
                    query_index=batch.query_index.to(device),
                    query_keys=[template_key(r.prompt) for r in rows_r],  # type: ignore[union-attr]
                    query_content=None if batch.query_content is None else batch.query_content.to(device),
                    passage_grad=stage.passage_grad,
                )
                s, c = response_nll(out.logits, batch.labels.to(device))
                if dummy:
                    s, c = s * 0.0, c * 0
                    qvec = out.query_vectors[:0] * 0.0  # type: ignore[index]
                else:
                    tokens += batch.tokens
                    qvec = out.query_vectors
                nll, count = nll + s, count + c
            if read_global:
                rows_v = [x.example for x in loc_read if isinstance(x.example, LMExample)]
                s, c, n = self._read_nll(rows_v, stage.passage_grad)
                nll, count, tokens = nll + s, count + c, tokens + n
            n_tokens = env.all_reduce_sum(count.float()).clamp(min=1.0)
            total = total + stage.lm_weight * (nll / n_tokens) * W
            parts["lm"] = env.all_reduce_sum(nll) / n_tokens

        if ret_on:
            if qvec is None:
                prompts = [s.example.prompt for s in loc_ret] or ["."]
                ids, mask, content = self.collator.prompts(prompts)
                keys = [template_key(p) for p in prompts]
                content = None if content is None else content.to(device)
                qvec = m.query_vectors(ids.to(device), mask.to(device), keys=keys, content=content)
                if loc_ret:
                    tokens += int(mask.sum())
                else:
                    qvec = qvec[:0] * 0.0
            if stage.objective == "nce":
                j, n = self._nce(micro, bounds, loc_ret, ret_sizes, qvec)
                tokens += n
                parts["nce"] = j.detach()
            else:
                j, n = self._distill(micro, bounds, loc_ret, n_ret_global, qvec)
                tokens += n
                parts["distill"] = env.all_reduce_sum(j.detach())
            total = total + stage.retrieval_weight * j * W
        parts["loss"] = total
        parts["tokens"] = torch.tensor(float(tokens), device=device)
        return parts

    # ------------------------------------------------------------------ rows that read their provenance
    def read_ids(self, ex: LMExample) -> list[str]:
        """The passage ids an evidence row reads: its own, and (unless the source reads no distractors) others
        up to read_passages, in an order drawn like them (so a reader cannot learn that the evidence comes
        first), from a generator seeded by the example id (every process and a resumed run draw the same)."""
        n = self.read_passages
        own = ex.read[:n]
        extra = n - len(own)
        if extra <= 0 or not ex.distractors:
            return own
        rng = random.Random(f"read:{self.cfg.seed}:{ex.id}")
        if len(self._pids) <= n + len(ex.read):  # a tiny corpus: every other passage, shuffled
            pool = [p for p in self._pids if p not in ex.read]
            rng.shuffle(pool)
            picked = pool[:extra]
        else:
            picked = []
            while len(picked) < extra:  # ends: more than `extra` passages lie outside ex.read
                p = self._pids[rng.randrange(len(self._pids))]
                if p not in ex.read and p not in picked:
                    picked.append(p)
        read = own + picked
        rng.shuffle(read)
        return read

    def _read_nll(
        self, rows: list[LMExample], passage_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(summed response NLL, response tokens, tokens run) of rows read with their passages; an empty
        slice runs a one-row dummy (FSDP) whose loss and count are zeroed."""
        m = self.imprag
        device = m.device
        dummy = not rows
        if dummy:
            assert self._dummy_pid is not None
            rows = [LMExample("dummy", "lm", ".", ".", read=[self._dummy_pid])]
        batch = self.collator.sequences([r.prompt for r in rows], [r.response for r in rows])
        texts = [[self.passages[p] for p in self.read_ids(r)] for r in rows]
        passages = m.tokenize_passages(texts).to(device)
        logits = m.forward(
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            passages=passages,
            passage_grad=passage_grad,
        ).logits
        s, c = response_nll(logits, batch.labels.to(device))
        if dummy:
            return s * 0.0, c * 0, 0
        return s, c, batch.tokens + int(passages.attention_mask.sum())

    # ------------------------------------------------------------------ multi-label NCE
    def _columns(self, slots: list[Slot]) -> list[tuple[str, int, bool]]:
        """(passage id, owner query index within `slots`' retrieval examples, is positive) per column."""
        cols: list[tuple[str, int, bool]] = []
        P = self.cfg.data.positives
        for qi, s in enumerate(x for x in slots if x.is_retrieval):
            ex = s.example
            assert isinstance(ex, RetrievalExample)
            cols += [(c, qi, True) for c in ex.candidates[:P]]
            cols += [(c, qi, False) for c in s.negatives]
        return cols

    def _nce(self, micro, bounds, loc_ret, ret_sizes, qvec) -> tuple[torch.Tensor, int]:
        """Global multi-label NCE with in-batch negatives from every process (returns the loss and the
        number of local passage tokens encoded)."""
        m, env = self.imprag, self.env
        device = qvec.device
        # every process's columns, in rank order (= the order of the gathered passage vectors)
        per_rank = [self._columns(micro[a:b]) for a, b in bounds]
        cols: list[tuple[str, int, bool]] = []
        q_base = 0
        for r, rc in enumerate(per_rank):
            cols += [(pid, q_base + qi, pos) for pid, qi, pos in rc]
            q_base += ret_sizes[r]
        mine = per_rank[env.rank]
        texts = [self.passages[pid] for pid, _, _ in mine] or [self.passages[self._dummy_pid]]  # type: ignore[index]
        ids, mask = self._passage_inputs(texts)
        pvec = m.passage_vectors(ids.to(device), mask.to(device))
        n_tok = int(mask.sum()) if mine else 0
        if not mine:
            pvec = pvec[:0] * 0.0
        q_all = env.gather_with_local_grad(qvec, ret_sizes)  # (Q, D)
        p_all = env.gather_with_local_grad(pvec, [len(rc) for rc in per_rank])  # (N, D)
        scores = (q_all.float() @ p_all.float().T) / self.cfg.loss.nce_tau  # (Q, N)
        pos, neg = nce_masks(cols, q_all.shape[0], device)
        loss_sum, n_pairs = multi_label_nce(scores, pos, neg)
        return loss_sum / n_pairs.clamp(min=1), n_tok

    # ------------------------------------------------------------------ self-distillation
    def _distill(self, micro, bounds, loc_ret, n_ret_global, qvec) -> tuple[torch.Tensor, int]:
        """Sum over local queries of KL(P_T || P_R) over their top candidates, divided by the global
        number of retrieval queries."""
        m, cfg = self.imprag, self.cfg
        device = qvec.device
        C = cfg.data.distill_candidates
        rows = [s.example for s in loc_ret] or [self._dummy_retrieval()]
        dummy = not loc_ret
        cands = [r.candidates[:C] for r in rows]  # type: ignore[union-attr]
        width = max(len(c) for c in cands)
        cmask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
        for i, c in enumerate(cands):
            cmask[i, : len(c)] = True
        flat = [pid for c in cands for pid in c]
        ids, mask = self._passage_inputs([self.passages[p] for p in flat])
        pvec = m.passage_vectors(ids.to(device), mask.to(device))  # (sum C_i, D)
        n_tok = 0 if dummy else int(mask.sum())
        q = qvec if not dummy else qvec.new_zeros((1, qvec.shape[-1]))
        # scores (B, width): s(q_i, p_ic) = q_i . p_ic
        scores = torch.zeros((len(rows), width), device=device, dtype=torch.float32)
        owner = torch.tensor([i for i, c in enumerate(cands) for _ in c], device=device)
        slot = torch.tensor([j for c in cands for j in range(len(c))], device=device)
        scores = scores.index_put((owner, slot), (q.float()[owner] * pvec.float()).sum(-1))
        teacher = self._teacher_logp(rows, cands, width, micro, bounds).to(device)
        kl = distillation_kl(scores, teacher, cmask, cfg.loss.tau_r, cfg.loss.tau_t)
        j = kl.sum() / max(n_ret_global, 1)
        if dummy:
            j = j * 0.0
        return j, n_tok

    @torch.no_grad()
    def _teacher_logp(self, rows, cands, width, micro, bounds) -> torch.Tensor:
        """(B, width): token-mean log-likelihood of the gold response given (candidate, prompt), no grad.
        Every process runs the same number of chunks (FSDP needs matching calls)."""
        m, cfg = self.imprag, self.cfg
        C, chunk = cfg.data.distill_candidates, cfg.loss.teacher_batch_size
        per_rank_rows = [
            sum(min(C, len(s.example.candidates)) for s in micro[a:b] if s.is_retrieval) for a, b in bounds
        ]
        n_chunks = max(1, math.ceil(max(per_rank_rows) / chunk))
        pairs = [(i, j) for i, c in enumerate(cands) for j in range(len(c))]
        out = torch.zeros((len(rows), width))
        device = m.device
        for k in range(n_chunks):
            part = pairs[k * chunk : (k + 1) * chunk]
            use = part or [(0, 0)]  # a dummy chunk keeps the calls aligned across processes
            batch = self.collator.sequences(
                [rows[i].prompt for i, _ in use], [rows[i].answer for i, _ in use]
            )
            passages = m.tokenize_passages([[self.passages[cands[i][j]]] for i, j in use]).to(device)
            logits = m.forward(
                batch.input_ids.to(device), batch.attention_mask.to(device), passages=passages
            ).logits
            logp = response_mean_logp(logits, batch.labels.to(device)).float().cpu()
            for (i, j), v in zip(part, logp.tolist()):
                out[i, j] = v
        return out


def nce_masks(cols: list[tuple[str, int, bool]], n_queries: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) masks (Q, N) over the batch's passage columns.

    Query i's positives are its own positive columns. Its negatives are every other column — its own
    hard negatives and every other query's passages (in-batch) — except a passage that is one of its
    positives (same id) and repeated copies of a passage already counted (first occurrence only)."""
    N = len(cols)
    index: dict[str, int] = {}
    pid_idx = torch.tensor([index.setdefault(pid, len(index)) for pid, _, _ in cols], dtype=torch.long)
    first = torch.zeros(N, dtype=torch.bool)
    first[
        torch.tensor(
            sorted({pid: j for j, (pid, _, _) in reversed(list(enumerate(cols)))}.values()), dtype=torch.long
        )
    ] = True
    pos = torch.zeros((n_queries, N), dtype=torch.bool)
    pos_ids = torch.zeros(
        (n_queries, len(index)), dtype=torch.bool
    )  # (Q, U): passage ids each query holds as positive
    for j, (_, qi, is_pos) in enumerate(cols):
        if is_pos:
            pos[qi, j] = True
            pos_ids[qi, pid_idx[j]] = True
    neg = first[None, :] & ~pos_ids[:, pid_idx] & ~pos
    return pos.to(device), neg.to(device)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto/bf16) and on the CPU (bf16 only); otherwise nothing."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
