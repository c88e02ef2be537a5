"""`imprag index`: embed a passages JSONL with the bottom layers and build a FAISS index (resumable)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from imprag.device import DEVICE_HELP, pick_device
from imprag.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, help="ImpRAG / Hugging Face model folder (not needed with --merge-only)"
    )
    parser.add_argument("--passages", type=Path, help="passages JSONL, one {id, title, text} per line")
    parser.add_argument(
        "--out", type=Path, required=True, help="index folder (created; re-run the same command to resume)"
    )
    parser.add_argument(
        "--factory",
        default="Flat",
        help="FAISS factory string: Flat, HNSW32, IVF4096,PQ64, ... (default Flat)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="passages per forward pass (default 32)")
    parser.add_argument(
        "--max-length", type=int, default=None, help="tokens kept per passage (default: the model's l_max)"
    )
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored vectors (default float16)"
    )
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad JSONL lines: stop (default) or skip and report",
    )
    parser.add_argument(
        "--shard", default=None, metavar="i/P", help="embed only slice i of P (run all P, then --merge-only)"
    )
    parser.add_argument("--chunk-size", type=int, default=8192, help="lines per shard file (default 8192)")
    parser.add_argument(
        "--merge-only", action="store_true", help="build the FAISS index from finished shards"
    )
    parser.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="IVF/PQ training sample (default: 39 per centroid, at least 20k)",
    )
    parser.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="IVF lists probed at search time (stored; default ~sqrt(nlist), >= 16)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--model-dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="weights' dtype while embedding (default float32; the fingerprint changes if a cast is lossy)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_shard(spec: str | None) -> tuple[int, int, bool]:
    """--shard i/P, else torchrun's RANK/WORLD_SIZE, else 0/1. Returns (rank, world, from_torchrun)."""
    env_world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    env_rank = int(os.environ.get("RANK", "0") or 0)
    if spec is not None:
        if env_world > 1:
            raise UserError(
                f"--shard {spec} given inside a {env_world}-process torchrun job; use one or the other"
            )
        try:
            i, p = (int(x) for x in spec.split("/"))
        except ValueError:
            raise UserError(f"--shard {spec!r}: expected i/P, e.g. 0/4") from None
        if not (p >= 1 and 0 <= i < p):
            raise UserError(f"--shard {spec}: need 0 <= i < P")
        return i, p, False
    return env_rank, env_world, env_world > 1


def _model_encoder(
    path: Path, device: str, model_dtype: str, max_length: int | None, passages: Path, out: Path
):
    from imprag.index.encoder import model_encoder
    from imprag.model.calibration import ensure_calibrated
    from imprag.model.imprag import ImpRAG

    m = ImpRAG.from_pretrained(path, dtype=model_dtype, device=pick_device(device))
    ensure_calibrated(m, passages, saved=out)  # a backbone used as it is: calibrated from this corpus
    encoder = model_encoder(m, max_length, source=path)
    return encoder, encoder.info["max_length"]


def run(args: argparse.Namespace) -> int:
    from imprag.index.build import IndexBuildConfig, build_index, merge

    show = not args.quiet
    if args.merge_only:
        meta = merge(args.out, args.factory, args.train_size, args.nprobe, args.passages, show_progress=show)
        _summary(meta)
        return 0
    if args.model is None or args.passages is None:
        raise UserError("--model and --passages are required (only --merge-only works without them)")
    rank, world, torchrun = parse_shard(args.shard)
    encoder, limit = _model_encoder(
        args.model, args.device, args.model_dtype, args.max_length, args.passages, args.out
    )
    cfg = IndexBuildConfig(
        out=args.out,
        passages=args.passages,
        factory=args.factory,
        batch_size=args.batch_size,
        max_length=limit,
        dtype=args.dtype,
        on_error=args.on_error,
        chunk_size=args.chunk_size,
        rank=rank,
        world_size=world,
        merge=world == 1 or torchrun,  # explicit --shard processes leave the merge to --merge-only
        wait=torchrun,
        train_size=args.train_size,
        nprobe=args.nprobe,
        show_progress=show,
    )
    result = build_index(cfg, encoder)
    e = result.embed
    print(
        f"rank {rank}/{world}: {e.chunks_mine} chunks ({e.chunks_done_before} already done), "
        f"embedded {e.passages_embedded} passages in {e.seconds:.1f} s ({e.passages_per_second:.1f} passages/s), "
        f"{e.lines_skipped} bad lines skipped"
    )
    if result.metadata is not None:
        _summary(result.metadata)
    elif not torchrun:
        print(
            f"shard {rank}/{world} done; once all {world} are done: imprag index --merge-only --out {args.out}"
            + (f" --factory '{args.factory}'" if args.factory != "Flat" else "")
        )
    return 0


def _summary(meta: dict[str, Any]) -> None:
    notes = "".join(f"\n  note: {n}" for n in meta.get("factory_notes", []))
    skipped = meta["skipped"]["count"]
    print(
        f"index: {meta['count']} passages x {meta['dim']} ({meta['factory_effective']}, inner product)"
        f"{f', {skipped} bad lines skipped (listed in metadata.json)' if skipped else ''}{notes}"
    )
