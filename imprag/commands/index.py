"""`imprag index`: embed a passages JSONL with the bottom layers and build a FAISS index (resumable)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imprag.config_io import option, same_named
from imprag.device import DEVICE_HELP, pick_device
from imprag.errors import UserError


@dataclass(kw_only=True)
class Options:
    model: Path | None = option(None, "ImpRAG / Hugging Face model folder (not needed with --merge-only)")
    passages: Path | None = option(None, "passages JSONL, one {id, title, text} per line")
    out: Path = option(help="index folder (created; re-run the same command to resume)")
    factory: str = option("Flat", "FAISS factory string: Flat, HNSW32, IVF4096,PQ64, ... (default Flat)")
    batch_size: int = option(32, "passages per forward pass")
    max_length: int | None = option(None, "tokens kept per passage (default: the model's l_max)")
    dtype: Literal["float16", "float32"] = option("float16", "stored vectors")
    on_error: Literal["fail", "skip"] = option("fail", "bad JSONL lines: stop (default) or skip and report")
    shard: str | None = option(None, "embed only slice i of P (run all P, then --merge-only)", metavar="i/P")
    chunk_size: int = option(8192, "lines per shard file")
    merge_only: bool = option(False, "build the FAISS index from finished shards")
    train_size: int | None = option(None, "IVF/PQ training sample (default: 39 per centroid, at least 20k)")
    nprobe: int | None = option(None, "IVF lists probed at search time (stored; default ~sqrt(nlist), >= 16)")
    device: str = option("auto", DEVICE_HELP)
    model_dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32",
        "weights' dtype while embedding (default float32; the fingerprint changes if a cast is lossy)",
    )
    quiet: bool = option(False, "no progress bars")


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


def run(args: Options) -> int:
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
    cfg = same_named(
        IndexBuildConfig,
        args,
        max_length=limit,
        rank=rank,
        world_size=world,
        merge=world == 1 or torchrun,  # explicit --shard processes leave the merge to --merge-only
        wait=torchrun,
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
