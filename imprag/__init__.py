"""ImpRAG: one decoder that retrieves (bottom layers), reads (middle layers) and generates (top layers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ImpRAG", "ImpRAGConfig", "Index", "UserError"]

from imprag.errors import UserError

if TYPE_CHECKING:
    from imprag.index.faiss_index import Index
    from imprag.model.config import ImpRAGConfig
    from imprag.model.imprag import ImpRAG


def __getattr__(name: str) -> Any:  # lazy: `import imprag` must not pull torch/faiss for `imprag --help`
    if name == "ImpRAG":
        from imprag.model.imprag import ImpRAG

        return ImpRAG
    if name == "ImpRAGConfig":
        from imprag.model.config import ImpRAGConfig

        return ImpRAGConfig
    if name == "Index":
        from imprag.index.faiss_index import Index

        return Index
    raise AttributeError(name)
