"""`imprag pull smollm2 --out DIR`: real SmolLM2-135M-Instruct weights as a safetensors folder."""

from __future__ import annotations

import argparse

from imprag.model.pull import SOURCES, pull


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(SOURCES), help="which model")
    parser.add_argument("--out", required=True, help="folder to write (HF model + tokenizer + imprag.json)")
    parser.add_argument("--force", action="store_true", help="convert again even if OUT is complete")


def run(args: argparse.Namespace) -> int:
    path = pull(args.name, args.out, force=args.force)
    print(path)
    return 0
