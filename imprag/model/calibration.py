"""Calibration of retrieval states: the shared components that are removed before comparing vectors.

Attention keys share a large common direction (attention sinks), and a prompt template adds another that
every prompt of that format shares; both swamp the content (measured in docs/benchmarks.md, "Retrieval
states on real backbones"). Calibration subtracts a mean: one for passages, and one per prompt format for
queries. A prompt's format is recognised from the task templates (`imprag.data.tasks`); a prompt that
matches none uses the "free" mean. Every mean is computed without labels, from prompts and passages alone.
The same template match marks a prompt's content tokens for "content" pooling (`content_flags`).
Shapes: D = h_k * d (the retrieval vector size).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from imprag.errors import UserError

CALIBRATION_NAME = "calibration.safetensors"
FREE = "free"  # the key of prompts that match no known template


@lru_cache(maxsize=1)
def template_matchers() -> tuple[tuple[str, str, re.Pattern], ...]:
    """(key, template, full-match regex) per distinct task template, most literal characters first, so
    that the most specific template wins when several match."""
    from imprag.data.tasks import TASKS

    seen: dict[str, str] = {}
    kinds: dict[str, set[str]] = {}
    for spec in TASKS.values():
        kinds.setdefault(spec.kind, set()).add(spec.template)
    for spec in TASKS.values():
        if spec.kind == "lm" or spec.template in seen.values():
            continue
        seen[spec.kind if len(kinds[spec.kind]) == 1 else spec.name] = spec.template
    out = []
    for key, template in seen.items():
        parts = re.split(r"\{[a-z_]+\}", template)
        pattern = re.compile("(.+?)".join(re.escape(p) for p in parts), re.DOTALL)
        out.append((key, template, pattern, sum(len(p.strip()) for p in parts)))
    out.sort(key=lambda x: -x[3])
    return tuple((k, t, p) for k, t, p, _ in out)


def template_key(prompt: str) -> str:
    """The calibration key of a prompt: its task template's key, or FREE."""
    text = prompt.strip()
    for key, _, pattern in template_matchers():
        if pattern.fullmatch(text):
            return key
    return FREE


def calibration_prompts(passages: list[str], per_template: int = 64, seed: int = 0) -> dict[str, list[str]]:
    """Prompts of every known format, their slots filled from the passages (no labels needed).

    Passages read "Title: text": an entity slot gets a title, a relation slot a few words, a statement or
    question a title with a few words around it, a context a span of text with a title marked [START] ...
    [END] in it (what entity linking marks). FREE gets a title with a few words. Each format's mean over
    these prompts stands for the component that all its prompts share.
    """
    if not passages:
        raise UserError("calibration needs at least one passage (pass --passages with some text)")
    rng = random.Random(seed)
    split = [p.split(": ", 1) if ": " in p[:120] else ["", p] for p in passages]
    titles = [t for t, _ in split if t.strip()] or [" ".join(p.split()[:3]) for p in passages]
    words = [b.split() for _, b in split if b.split()] or [p.split() for p in passages if p.split()]

    def span(lo: int, hi: int) -> str:
        w = rng.choice(words)
        n = min(len(w), rng.randint(lo, hi))
        start = rng.randint(0, len(w) - n)
        return " ".join(w[start : start + n])

    def mention(lo: int, hi: int) -> str:
        w = span(lo, hi).split()
        at = rng.randint(0, len(w))
        return " ".join(w[:at] + [f"[START] {rng.choice(titles)} [END]"] + w[at:])

    fill = {
        "entity": lambda: rng.choice(titles),
        "relation": lambda: span(1, 3),
        "question": lambda: f"{span(2, 6)} {rng.choice(titles)}?",
        "statement": lambda: f"{rng.choice(titles)} {span(3, 8)}.",
    }
    out: dict[str, list[str]] = {FREE: [f"{span(2, 6)} {rng.choice(titles)}" for _ in range(per_template)]}
    for key, template, _ in template_matchers():
        names = re.findall(r"\{([a-z_]+)\}", template)
        rows = []
        for _ in range(per_template):
            values = {}
            for n in names:
                if n in fill:
                    values[n] = fill[n]()
                elif "[START]" in template:
                    values[n] = mention(20, 60)
                else:
                    values[n] = span(30, 80)
            rows.append(template.format(**values))
        out[key] = rows
    return out


@dataclass
class Calibration:
    """Means subtracted before scoring: `passage` (D,) from passage states, `query[key]` (D,) per format."""

    passage: torch.Tensor
    query: dict[str, torch.Tensor] = field(default_factory=dict)

    def query_means(self, keys: list[str], mode: str) -> torch.Tensor:
        """(B, D): the mean to subtract from each query ("mean": the FREE mean for all)."""
        if mode == "mean":
            keys = [FREE] * len(keys)
        free = self.query[FREE]
        return torch.stack([self.query.get(k, free) for k in keys])

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {"passage": self.passage.detach().float().contiguous()}
        tensors.update({f"query.{k}": v.detach().float().contiguous() for k, v in self.query.items()})
        return save(tensors)

    def save(self, directory: str | Path) -> None:
        from imprag.io import atomic_write_bytes

        atomic_write_bytes(Path(directory) / CALIBRATION_NAME, self.to_bytes())

    @staticmethod
    def load(directory: str | Path) -> Calibration | None:
        from safetensors.torch import load_file

        path = Path(directory) / CALIBRATION_NAME
        if not path.exists():
            return None
        try:
            tensors = load_file(str(path))
        except Exception as e:  # noqa: BLE001 (a damaged file: one line)
            raise UserError(
                f"{path}: unreadable calibration ({e}); delete it and run `imprag calibrate`"
            ) from None
        if "passage" not in tensors or f"query.{FREE}" not in tensors:
            raise UserError(f"{path}: missing the passage or free-query mean; run `imprag calibrate` again")
        query = {k[len("query.") :]: v for k, v in tensors.items() if k.startswith("query.")}
        return Calibration(tensors["passage"], query)


def sample_passage_texts(path: str | Path, n: int = 512, seed: int = 0, scan: int = 20000) -> list[str]:
    """A seeded sample of `n` passage texts ("Title: text") from the first `scan` lines of a passages
    JSONL. Lines that are not JSON objects are passed over silently: the index build reports them."""
    import json

    from imprag.passage import passage_text

    texts = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if i >= scan:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    texts.append(passage_text(row))
    except OSError as e:
        raise UserError(f"{path}: cannot read the passages ({e.strerror})") from None
    if not texts:
        raise UserError(f"{path}: no passages to calibrate retrieval with")
    return random.Random(seed).sample(texts, min(n, len(texts)))


def ensure_calibrated(model, passages: str | Path, saved: str | Path | None = None) -> bool:
    """Give a model that needs calibration means and has none the ones saved in folder `saved` (an index
    being resumed), else compute them from a sample of `passages`. Returns True when it set them."""
    if model.config.calibration == "none" or model.calibration is not None:
        return False
    model.calibration = Calibration.load(saved) if saved is not None else None
    if model.calibration is None:
        model.calibrate(sample_passage_texts(passages))
        logging.getLogger(__name__).info("retrieval calibration computed from a sample of %s", passages)
    return True


def content_flags(tokenizer, texts: list[str]) -> list[list[bool]] | None:
    """Per text, per token (with the tokenizer's special tokens): does the token carry the prompt's own
    content, i.e. overlap a filled slot of its task template? A prompt of no known template is all content.
    None when the tokenizer gives no character offsets (a slow tokenizer): then every token counts."""
    if not getattr(tokenizer, "is_fast", False) or not texts:
        return None
    enc = tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True)
    matchers = {k: p for k, _, p in template_matchers()}
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        key = template_key(text)
        spans = [(0, len(text))]
        if key != FREE:
            lead = len(text) - len(text.lstrip())
            match = matchers[key].fullmatch(text.strip())
            assert match is not None
            groups = range(1, (match.lastindex or 0) + 1)
            spans = [(a + lead, b + lead) for a, b in (match.span(g) for g in groups)]
        flags = [any(a < e and b > s for s, e in spans) for a, b in offsets]
        out.append(flags if any(flags) else [True] * len(flags))
    return out
