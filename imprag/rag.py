"""Retrieve-then-read with one model: the implicit query picks passages, the middle layers read them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imprag.model.imprag import Generation, ImpRAG
from imprag.passage import passage_text


@dataclass
class Answer:
    generation: Generation
    passages: list[dict[str, Any]]  # retrieved records with "score" and "row", best first

    @property
    def text(self) -> str:
        return self.generation.text.strip()


def retrieve(
    model: ImpRAG, index: Any, prompts: list[str], k: int | None = None
) -> list[list[dict[str, Any]]]:
    """Top-k passages per prompt for the model's implicit query (k defaults to the model's k)."""
    return index.retrieve(model, prompts, k or model.config.k)


def answer_stream(
    model: ImpRAG, index: Any, prompts: list[str], k: int | None = None, **generate_kwargs
) -> Iterator[list[Answer]]:
    """Retrieve once per prompt, then decode; yields every row's state after each step."""
    hits = retrieve(model, index, prompts, k)
    texts = [[passage_text(p) for p in ps] for ps in hits]
    for states in model.generate_stream(prompts, texts, **generate_kwargs):
        yield [Answer(g, ps) for g, ps in zip(states, hits)]


def answer(
    model: ImpRAG, index: Any, prompts: list[str], k: int | None = None, **generate_kwargs
) -> list[Answer]:
    final: list[Answer] = []
    for final in answer_stream(model, index, prompts, k, **generate_kwargs):  # noqa: B007 (keep the last)
        pass
    return final
