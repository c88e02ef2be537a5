"""FEVER by claim likelihood: the claim's place in the prompt, the calibration statements, the threshold."""

from __future__ import annotations

import pytest
import torch

from imprag.data.example import Example
from imprag.data.tasks import apply_template, get_task
from imprag.eval.verify import claim_parts, fit_threshold, sample_ids, statements

FEVER = get_task("fever")


def test_claim_parts_cut_the_prompt_where_the_claim_starts():
    claim = "Mira Quell wrote The Silent King."
    head, tail = claim_parts(FEVER, Example("f0", "fever", claim, apply_template(FEVER, claim)))
    assert (head, tail) == ("Is this statement true?", " " + claim)
    assert apply_template(FEVER, claim).startswith(head + tail)


@pytest.mark.parametrize(
    ("scores", "truth", "cut", "accuracy"),
    [
        ([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1], 2.5, 1.0),  # separable: the midpoint of the gap
        ([4.0, 1.0, 3.0, 2.0], [1, 0, 1, 0], 2.5, 1.0),  # order of the statements does not matter
        ([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1], 3.5, 0.75),  # best cuts 1.5 / 3.5 (0.75) and below all (0.5)
        ([1.0, 2.0, 3.0], [1, 1, 0], 0.0, 2 / 3),  # everything True beats any cut that keeps the order
    ],
)
def test_threshold_classifies_the_most_statements_right(scores, truth, cut, accuracy):
    t = fit_threshold(torch.tensor(scores), torch.tensor(truth, dtype=torch.bool))
    assert t is not None and t.value == pytest.approx(cut) and t.accuracy == pytest.approx(accuracy, abs=1e-4)
    assert t.statements == len(scores)


def test_no_threshold_without_both_kinds_of_statement():
    assert fit_threshold(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None
    assert fit_threshold(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) is None


def test_statements_alternate_and_point_at_their_source():
    passages = [
        {
            "id": f"p{i}",
            "title": f"Ardo Vel{i}",
            "text": f"Ardo Vel{i} was born in Kesta in {1800 + i}. He wrote.",
        }
        for i in range(20)
    ]
    ids = sample_ids([p["id"] for p in passages], n=4)
    assert ids == sample_ids([p["id"] for p in passages], n=4) and len(set(ids)) == 16  # seeded, 4n
    rows = statements(passages, FEVER, n=6)
    assert [r.answers for r in rows] == [["True"], ["False"]] * 3
    for r in rows:
        src = next(p for p in passages if p["id"] == r.provenance[0].passage_id)
        assert r.prompt == apply_template(FEVER, r.input) and r.task == "fever"
        assert (r.input in src["text"]) == (r.answers == ["True"])  # a False one has a swapped value
