"""FEVER judged by the claim's likelihood given the evidence a method reads (`imprag eval --fever likelihood`).

A claim is True when log p(claim | evidence, instruction) is above a threshold. A claim that the evidence
states is copied from it (its names and numbers score near 0 nats per token); a claim with one name or
number swapped has that token scored against the evidence's own value. The threshold is each method's
own: fitted on statements built from the corpus (`retrieval_free.verify_rows`: a passage's sentence as
written, or with one name or number swapped for another passage's), each read with the evidence the
method finds for it. No FEVER label is used. The paper's way (`--fever label`: the model answers, and the
label whose first token it scores higher wins) stays available; a method without evidence (closed-book)
always answers that way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from imprag.data.example import Example, Provenance
from imprag.data.retrieval_free import verify_rows
from imprag.data.tasks import TaskSpec, apply_template, input_fields

STATEMENTS = 24  # calibration statements per method (half True, half False): ~0.6 s each reading 5 passages


@dataclass(frozen=True)
class Threshold:
    value: float  # log-likelihood in nats above which a claim is True
    accuracy: float  # on the calibration statements
    statements: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "threshold": round(self.value, 4),
            "statement_accuracy": self.accuracy,
            "statements": self.statements,
        }


def claim_parts(spec: TaskSpec, example: Example) -> tuple[str, str]:
    """(the instruction before the claim, " " + the claim): the prompt cut where the claim starts. The
    template's first field is the claim; what follows it cannot change its causal likelihood."""
    field = spec.fields[0]
    head = spec.template[: spec.template.index("{" + field + "}")].rstrip()
    return head, " " + input_fields(spec, example.input)[field]


def statements(passages: Sequence[dict], spec: TaskSpec, n: int = STATEMENTS, seed: int = 0) -> list[Example]:
    """Up to n true/false statements (alternating) built from `passages`, as examples of `spec`'s task
    whose provenance is the source passage."""
    rows = verify_rows(passages, seed=seed, limit=n)
    return [
        Example(
            id=r["id"],
            task=spec.name,
            input=r["input"],
            prompt=apply_template(spec, r["input"]),
            answers=[r["output"][0]["answer"]],
            provenance=[
                Provenance(passage_id=p["passage_id"], title=p["title"]) for p in r["output"][1]["provenance"]
            ],
        )
        for r in rows
    ]


def sample_ids(ids: Sequence[str], n: int = STATEMENTS, seed: int = 0) -> list[str]:
    """The passages statements are drawn from: 4n of the corpus's ids, seeded (some passages give none)."""
    return random.Random(f"verify-calibration:{seed}").sample(list(ids), min(len(ids), 4 * n))


def fit_threshold(scores: torch.Tensor, truth: torch.Tensor) -> Threshold | None:
    """The midpoint between two sorted scores that classifies the most statements right (ties: the middle
    one of the best); None without both classes."""
    if scores.numel() == 0 or bool(truth.all()) or not bool(truth.any()):
        return None
    s = scores.sort().values
    cuts = torch.cat([s[:1] - 1, (s[1:] + s[:-1]) / 2, s[-1:] + 1])
    correct = ((scores[None, :] > cuts[:, None]) == truth[None, :]).float().mean(1)  # (cuts,)
    best = (correct == correct.max()).nonzero()[:, 0]
    cut = best[len(best) // 2]
    return Threshold(float(cuts[cut]), round(float(correct[cut]), 4), len(scores))
