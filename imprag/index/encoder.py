"""An ImpRAG model as the index's `Encoder`: passage texts -> layer-b key vectors (bottom layers only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imprag.index.build import Encoder


def model_encoder(model: Any, max_length: int | None = None, source: str | Path | None = None) -> Encoder:
    limit = max_length or model.config.l_max

    def embed(texts: list[str]):
        return model.embed_passages(texts, batch_size=len(texts), max_length=limit).numpy()

    info: dict[str, Any] = {"b": model.config.b, "state": model.config.state, "max_length": limit}
    if source is not None:
        info["model"] = str(Path(source).resolve())
    files = {}
    if model.calibration is not None and model.config.calibration != "none":  # queries need it too
        from imprag.model.calibration import CALIBRATION_NAME

        files[CALIBRATION_NAME] = model.calibration.to_bytes()
    return Encoder(embed=embed, dim=model.dim, fingerprint=model.fingerprint(), info=info, files=files)
