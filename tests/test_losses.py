"""The training losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from imprag.train.loop import lr_lambda
from imprag.train.losses import IGNORE, distillation_kl, multi_label_nce, response_mean_logp, response_nll
from imprag.train.objective import nce_masks


def test_multi_label_nce_excludes_other_positives_from_each_denominator():
    # query 0: positives at columns 0 and 1, negatives 2 and 3; query 1: positive 2, negatives 0 and 3
    s = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.3, 9.0, 1.5, 0.0]])
    pos = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    neg = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)  # column 1 is nobody's negative for q1
    total, count = multi_label_nce(s, pos, neg)
    e = math.exp
    by_hand = [
        -math.log(e(2.0) / (e(2.0) + e(0.5) + e(-1.0))),  # q0, p=col0: col1 (another positive) not counted
        -math.log(e(1.0) / (e(1.0) + e(0.5) + e(-1.0))),  # q0, p=col1: col0 not counted
        -math.log(e(1.5) / (e(1.5) + e(0.3) + e(0.0))),  # q1: col1's score 9.0 is ignored
    ]
    assert int(count) == 3
    assert_close(total, torch.tensor(sum(by_hand)), rtol=1e-6, atol=1e-6)
    # the ordinary softmax over all columns would be a different number
    softmax_ce = -torch.log_softmax(s[0], -1)[0]
    assert not torch.isclose(softmax_ce, torch.tensor(by_hand[0]))


def test_multi_label_nce_without_negatives_is_zero_and_overlap_is_refused():
    s = torch.tensor([[3.0, -2.0]])
    pos = torch.tensor([[True, False]])
    total, count = multi_label_nce(s, pos, torch.zeros_like(pos))
    assert float(total) == 0.0 and int(count) == 1  # -log(e^s / e^s)
    with pytest.raises(ValueError):
        multi_label_nce(s, pos, pos)


def test_nce_masks_in_batch_negatives_skip_own_positives_and_duplicates():
    # columns: (passage id, owner query, positive?)
    cols = [("a", 0, True), ("b", 0, False), ("c", 1, True), ("a", 1, False), ("b", 1, False)]
    pos, neg = nce_masks(cols, 2, "cpu")
    assert pos.tolist() == [[True, False, False, False, False], [False, False, True, False, False]]
    # query 0: its hard negative b, query 1's positive c (in-batch); the second "a" is its own positive and
    # the second "b" a duplicate
    assert neg.tolist()[0] == [False, True, True, False, False]
    # query 1: "a" (first copy, query 0's positive) and "b" (first copy); its own "c" is its positive
    assert neg.tolist()[1] == [True, True, False, False, False]


def test_distillation_kl_direction_temperatures_and_detached_target():
    s = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    logp = torch.tensor([[-1.0, -3.0, -0.5]], requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    tau_r, tau_t = 2.0, 0.5
    kl = distillation_kl(s, logp, mask, tau_r=tau_r, tau_t=tau_t)

    def softmax(xs):
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    pt = softmax([x / tau_t for x in (-1.0, -3.0, -0.5)])
    pr = softmax([x / tau_r for x in (1.0, 2.0, 0.0)])
    by_hand = sum(a * math.log(a / b) for a, b in zip(pt, pr))  # KL(P_T || P_R)
    reverse = sum(b * math.log(b / a) for a, b in zip(pt, pr))  # KL(P_R || P_T): the other direction
    assert_close(kl, torch.tensor([by_hand]), rtol=1e-6, atol=1e-7)
    assert abs(by_hand - reverse) > 1e-2
    kl.sum().backward()
    assert logp.grad is None  # no gradient reaches the teacher's scores
    # d KL / d s = (P_R - P_T) / tau_r
    assert_close(s.grad, torch.tensor([[(b - a) / tau_r for a, b in zip(pt, pr)]]), rtol=1e-5, atol=1e-7)


def test_distillation_kl_ignores_padded_candidates():
    s = torch.tensor([[1.0, 2.0, 50.0]])
    logp = torch.tensor([[-1.0, -2.0, 40.0]])
    mask = torch.tensor([[True, True, False]])
    full = distillation_kl(s[:, :2], logp[:, :2], torch.ones(1, 2, dtype=torch.bool))
    assert_close(distillation_kl(s, logp, mask), full)


def test_response_nll_counts_response_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 1, 2, 0, 0]])
    labels = torch.full_like(ids, IGNORE)
    labels[0, 3:] = ids[0, 3:]  # prompt = 3 tokens, response = 2 tokens
    labels[1, 2] = ids[1, 2]  # prompt = 2 tokens, response = 1 token, then padding
    total, count = response_nll(logits, labels)
    lp = torch.log_softmax(logits, -1)
    # token t is predicted by position t-1
    by_hand = -(lp[0, 2, 4] + lp[0, 3, 5] + lp[1, 1, 2])
    assert int(count) == 3
    assert_close(total, by_hand)
    mean = response_mean_logp(logits, labels)
    assert_close(mean, torch.stack([(lp[0, 2, 4] + lp[0, 3, 5]) / 2, lp[1, 1, 2]]))


def test_learning_rate_schedules():
    f = lr_lambda(total=10, warmup=2, schedule="linear", min_ratio=0.0)
    assert [round(f(s), 4) for s in range(11)] == [
        0.5,
        1.0,
        1.0,
        0.875,
        0.75,
        0.625,
        0.5,
        0.375,
        0.25,
        0.125,
        0.0,
    ]
    c = lr_lambda(total=10, warmup=0, schedule="cosine", min_ratio=0.1)
    assert c(0) == pytest.approx(1.0) and c(5) == pytest.approx(0.55) and c(10) == pytest.approx(0.1)
    assert lr_lambda(10, 0, "constant", 0.0)(7) == 1.0


def test_lr_stage_scales_apply_from_each_stage_start():
    f = lr_lambda(10, 0, "constant", 0.0, [(0, 1.0), (4, 0.1)])
    assert [f(s) for s in (0, 3, 4, 9)] == [1.0, 1.0, 0.1, 0.1]
