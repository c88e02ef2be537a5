"""Helpers shared by the benchmark scripts: real passages when ../shared/data is there, timing."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def wiki_passages(n: int) -> list[dict]:
    path = SHARED / "wiki" / "passages.jsonl"
    if not path.exists():
        raise SystemExit(f"needs the real passages at {path}")
    out = []
    with path.open() as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Median seconds of each fn, runs interleaved so machine noise hits all alike."""
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}
