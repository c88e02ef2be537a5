"""The training losses, as pure functions of score/logit tensors (each checked against hand-computed values).

Shapes: B queries, N passages in the batch, C candidates per query, T tokens, V vocabulary.
Losses return (sum, count) where the caller normalises over a global batch (several micro-batches or
processes), so that a distributed run equals a single-process run with the same global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


def multi_label_nce(
    scores: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-label NCE: for each positive p of query i,
    `-log( exp(s_ip) / (exp(s_ip) + sum_{n in N_i} exp(s_in)) )`; the other positives of i are not in
    the denominator.

    scores (B, N) float; positive (B, N) bool; negative (B, N) bool (must not overlap `positive`).
    Returns (sum over all (query, positive) pairs, number of pairs).
    """
    if (positive & negative).any():
        raise ValueError("a passage cannot be both a positive and a negative of the same query")
    neg_inf = torch.finfo(scores.dtype).min
    # log sum_n exp(s_in) over the negatives of each query: (B, 1); -inf-like when a query has none
    neg_lse = torch.logsumexp(scores.masked_fill(~negative, neg_inf), dim=-1, keepdim=True)
    has_neg = negative.any(-1, keepdim=True)
    # log(exp(s_ip) + sum_n exp(s_in)) for every (i, p): (B, N)
    denom = torch.where(has_neg, torch.logaddexp(scores, neg_lse.expand_as(scores)), scores)
    per_pair = (denom - scores).masked_fill(~positive, 0.0)
    return per_pair.sum(), positive.sum()


def distillation_kl(
    student_scores: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    tau_r: float = 1.0,
    tau_t: float = 1.0,
) -> torch.Tensor:
    """KL(P_T || P_R) per query over its candidates.

    P_T = softmax(teacher_logp / tau_t) (no gradient: the target is detached); P_R = softmax(s / tau_r).
    student_scores, teacher_logp (B, C); mask (B, C) bool for real candidates. Returns (B,).
    """
    neg_inf = torch.finfo(student_scores.dtype).min
    target = teacher_logp.detach().float() / tau_t
    log_pt = torch.log_softmax(target.masked_fill(~mask, neg_inf), dim=-1)
    log_pr = torch.log_softmax((student_scores.float() / tau_r).masked_fill(~mask, neg_inf), dim=-1)
    pt = log_pt.exp()
    return (pt * (log_pt - log_pr)).masked_fill(~mask, 0.0).sum(-1)


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM loss on labelled (response) tokens only.

    logits (B, T, V): position t predicts token t+1; labels (B, T): token ids where the token is part of
    the response, IGNORE elsewhere. Returns (sum of token NLL, number of predicted response tokens).
    """
    pred = logits[:, :-1].float()  # (B, T-1, V)
    target = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return nll, (target != IGNORE).sum()


def response_mean_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean log-likelihood of each row's response: (B,). Rows without response tokens get 0."""
    pred = logits[:, :-1].float()
    target = labels[:, 1:]
    valid = target != IGNORE
    logp = torch.log_softmax(pred, dim=-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]  # (B, T-1)
    logp = logp.masked_fill(~valid, 0.0)
    return logp.sum(-1) / valid.sum(-1).clamp(min=1)
