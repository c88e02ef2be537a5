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


@dataclass
class ImpRAGConfig:
    b: int  # last bottom layer: its query/key states are the retrieval vectors; middle starts here
    t: int  # last middle layer: layers b..t attend to the passages' key/value
    k: int = 10  # passages read per prompt
    l_max: int = 128  # max tokens per passage; the prompt's positions start at k * l_max
    state: str = "pre_rope"  # retrieval vectors before or after the rotary embedding
    reader: str = "concat"  # "concat": passages as one causal sequence; "independent": each from position 0

    @property
    def prompt_offset(self) -> int:
        return self.k * self.l_max

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
        return ImpRAGConfig(**data)
