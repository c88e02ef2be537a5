"""ImpRAGConfig: where the decoder is cut and how passages are read; saved as `imprag.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imprag.errors import UserError
from imprag.io import atomic_write_json

CONFIG_NAME = "imprag.json"
STATES = ("pre_rope", "post_rope")
READERS = ("concat", "independent")
POOLINGS = ("content", "mean", "last")
SIMILARITIES = ("cosine", "dot")
CALIBRATIONS = ("template", "mean", "none")
# The paper's retrieval state (last token, dot product, nothing subtracted): what an imprag.json written
# before these options existed meant, and one flag set away (`--pooling last --similarity dot
# --calibration none`). The defaults were chosen by measurement (docs/benchmarks.md).
PAPER_RETRIEVAL: dict[str, Any] = {"pooling": "last", "similarity": "dot", "calibration": "none"}


@dataclass
class ImpRAGConfig:
    b: int  # last bottom layer: its query/key states are the retrieval vectors; middle starts here
    t: int  # last middle layer: layers b..t attend to the passages' key/value
    k: int = 10  # passages read per prompt
    l_max: int = 128  # max tokens per passage; the prompt's positions start at k * l_max
    state: str = "pre_rope"  # retrieval vectors before or after the rotary embedding
    reader: str = "concat"  # "concat": passages as one causal sequence; "independent": each from position 0
    # layer-b states averaged over tokens. "content": a prompt's own tokens (those filling its task template's
    # slots; every token of a free-form prompt); "mean": every token but the first (an attention sink);
    # "last": the last token's (the paper). Passages: every token but the first unless "last".
    pooling: str = "content"
    similarity: str = "cosine"  # "cosine": unit vectors, score = cos / temperature; "dot": the paper
    temperature: float = 0.05  # cosine only: query vectors are scaled by 1 / temperature
    calibration: str = "template"  # subtract a mean: per prompt format ("template"), one ("mean"), "none"

    @property
    def prompt_offset(self) -> int:
        return self.k * self.l_max

    def check_reads(self, k: int) -> int:
        """`-k` of a command that reads through the middle layers: 0..self.k (prompt positions start at k*l_max)."""
        if not 0 <= k <= self.k:
            raise UserError(
                f"-k {k}: the model reads at most k={self.k} passages (its prompt positions start at "
                f"k*l_max); pass -k {self.k} or fewer"
            )
        return k

    def validate(self, num_layers: int) -> ImpRAGConfig:
        if not 0 <= self.b < self.t < num_layers:
            raise UserError(
                f"layer boundaries need 0 <= b < t < N: got --b {self.b}, --t {self.t} for a model with "
                f"N={num_layers} layers (choose e.g. --b {max(0, num_layers // 4)} --t {max(1, (num_layers * 7) // 10)})"
            )
        if self.k < 1 or self.l_max < 1:
            raise UserError(f"--k and --l-max must be positive (got k={self.k}, l_max={self.l_max})")
        if self.state not in STATES:
            raise UserError(f"--state must be one of {', '.join(STATES)} (got {self.state!r})")
        for flag, value, choices in (
            ("--pooling", self.pooling, POOLINGS),
            ("--similarity", self.similarity, SIMILARITIES),
            ("--calibration", self.calibration, CALIBRATIONS),
        ):
            if value not in choices:
                raise UserError(f"{flag} must be one of {', '.join(choices)} (got {value!r})")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be positive (got {self.temperature})")
        if self.reader not in READERS:
            raise UserError(f"--reader must be one of {', '.join(READERS)} (got {self.reader!r})")
        return self

    @staticmethod
    def default_for(num_layers: int, **overrides) -> ImpRAGConfig:
        """The paper's split in proportion (3B: b=7, t=19 of 28): b ~ N/4, t ~ 0.7 N."""
        b = max(0, num_layers // 4)
        t = max(b + 1, min(num_layers - 1, (num_layers * 7) // 10))
        fields: dict[str, Any] = {"b": b, "t": t}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return ImpRAGConfig(**fields)

    def save(self, directory: str | Path) -> None:
        atomic_write_json(Path(directory) / CONFIG_NAME, dataclasses.asdict(self))

    @staticmethod
    def load(directory: str | Path) -> ImpRAGConfig | None:
        path = Path(directory) / CONFIG_NAME
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(ImpRAGConfig)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        legacy = {k: v for k, v in PAPER_RETRIEVAL.items() if "pooling" not in data}
        return ImpRAGConfig(**{**legacy, **data})
