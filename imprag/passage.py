"""How a passage record becomes the text the model reads and indexes (one place, used everywhere)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def passage_text(p: Mapping[str, Any]) -> str:
    """`{"title", "text"}` -> "Title: text" (title omitted when empty)."""
    title = (p.get("title") or "").strip()
    text = (p.get("text") or "").strip()
    return f"{title}: {text}" if title else text
