"""An ImpRAG model as the index's `Encoder`: passage texts -> layer-b key vectors (bottom layers only)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imprag.index.build import Encoder

log = logging.getLogger(__name__)


def model_encoder(model: Any, max_length: int | None = None, source: str | Path | None = None) -> Encoder:
    """`source`: the model's folder; vectors its training stored there for these weights are used as they
    are (imprag.index.stored_vectors), every other passage is embedded."""
    import numpy as np

    from imprag.index.stored_vectors import load_passage_vectors, text_digest

    limit = max_length or model.config.l_max
    fingerprint = model.fingerprint()
    stored = load_passage_vectors(source, fingerprint, limit) if source is not None else {}
    if stored:
        log.info(
            "%d passage vectors stored by the training run: those passages are not embedded again",
            len(stored),
        )

    def run_model(texts: list[str]):
        return model.embed_passages(texts, batch_size=len(texts), max_length=limit).numpy()

    def embed(texts: list[str]):
        if not stored:
            return run_model(texts)
        found = [stored.get(text_digest(t)) for t in texts]
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:  # passages the training run did not see
            for i, v in zip(todo, run_model([texts[i] for i in todo])):
                found[i] = v
        return np.stack(found)  # type: ignore[arg-type]

    info: dict[str, Any] = {"b": model.config.b, "state": model.config.state, "max_length": limit}
    if source is not None:
        info["model"] = str(Path(source).resolve())
    files = {}
    if model.calibration is not None and model.config.calibration != "none":  # queries need it too
        from imprag.model.calibration import CALIBRATION_NAME

        files[CALIBRATION_NAME] = model.calibration.to_bytes()
    return Encoder(embed=embed, dim=model.dim, fingerprint=fingerprint, info=info, files=files)
