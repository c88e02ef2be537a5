"""`imprag pull smollm2 --out DIR`: real SmolLM2-135M-Instruct weights as a safetensors folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imprag.config_io import option
from imprag.model.pull import SOURCES, pull

SOURCE_NAMES = tuple(sorted(SOURCES))


@dataclass(kw_only=True)
class Options:
    name: Literal[SOURCE_NAMES] = option(help="which model", positional=True)  # type: ignore[valid-type]
    out: str = option(help="folder to write (HF model + tokenizer + imprag.json)")
    force: bool = option(False, "convert again even if OUT is complete")


def run(args: Options) -> int:
    path = pull(args.name, args.out, force=args.force)
    print(path)
    return 0
