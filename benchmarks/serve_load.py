"""Load benchmark of `imprag serve`: C concurrent clients on loopback send a fixed number of completion
requests, once to a server that batches (--max-batch-size B) and once to one that does not (batch size 1),
in the same run. Prints errors, p50/p99 latency, requests/s and mean batch size for each, and the
throughput ratio.

    python benchmarks/serve_load.py                     # builds a small random model + index in --work
    python benchmarks/serve_load.py --model M --index I # or serve your own

The servers run as real `imprag serve` subprocesses (so the clients, an asyncio loop with the official
`openai` AsyncOpenAI client, do not share a GIL with the model). Without --model, a random Llama (--size tiny:
6 layers, hidden 64, GQA 4/2 heads; small: 8 layers, hidden 256, GQA 8/4 heads; byte-level BPE trained on
the passages) and a FAISS index over the
first --passages-limit passages of ../shared/data/wiki/passages.jsonl (synthetic text if absent) are
built once under --work and reused. Prompts are NQ dev questions as "Q: {question} A:" (synthetic if
absent). Greedy decoding, a fixed max_tokens, so both servers do the same work per request.
Exit status 1 if any request failed.

    python benchmarks/serve_load.py --overload          # one server, more clients than it holds

--overload: one batching server with a small --max-concurrent (default 8) and --concurrency clients
(default 64) sending --requests requests in all; every --abandon-every-th request streams and leaves after
its first chunk. Counts outcomes by HTTP status (200, 429, 503, ...) and client timeouts (a hang), the
p50/p99 latency of answered and of refused requests, and the server's active requests afterwards (must be
0: abandoned streams free their places). Exit status 1 on a timeout, a status other than 200/429/503, or
places left taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


SIZES = {  # save_tiny overrides: "tiny" is the tests' shape, "small" is ~4x wider and deeper
    "tiny": {"layers": 6, "hidden": 64, "heads": 4, "kv_heads": 2},
    "small": {"layers": 8, "hidden": 256, "heads": 8, "kv_heads": 4, "intermediate": 512},
}


def build_assets(work: Path, n_passages: int, size: str) -> tuple[Path, Path]:
    """A random model of `size` and an index of n_passages real (or synthetic) passages, made once."""
    from imprag.cli import main as cli
    from imprag.model.tiny import save_tiny

    work.mkdir(parents=True, exist_ok=True)
    passages = work / "passages.jsonl"
    if not passages.exists():
        src = DATA / "wiki" / "passages.jsonl"
        lines: list[str] = []
        if src.exists():
            with src.open(encoding="utf-8") as f:
                for line in f:
                    if len(lines) >= n_passages:
                        break
                    lines.append(line)
        else:
            words = "the river city king queen book author war song capital valley north south".split()
            for i in range(n_passages):
                text = " ".join(words[(i * 7 + j) % len(words)] for j in range(60))
                lines.append(json.dumps({"id": f"s{i}", "title": f"Passage {i}", "text": text}) + "\n")
        passages.write_text("".join(lines), encoding="utf-8")
    model = work / f"model-{size}"
    if not (model / "config.json").exists():
        texts = [json.loads(x)["text"] for x in passages.read_text(encoding="utf-8").splitlines()[:2000]]
        save_tiny(model, arch="llama", texts=texts, **SIZES[size])
    index = work / f"index-{size}"
    if not (index / "metadata.json").exists():
        rc = cli(
            ["index", "--model", str(model), "--passages", str(passages), "--out", str(index), "--quiet"]
        )
        if rc != 0:
            raise SystemExit(f"building the index failed (exit {rc})")
    return model, index


def prompts(n: int) -> list[str]:
    qs: list[str] = []
    src = DATA / "nq" / "dev.jsonl"
    if src.exists():
        with src.open(encoding="utf-8") as f:
            for line in f:
                qs.append(f"Q: {json.loads(line)['input']} A:")
                if len(qs) >= n:
                    break
    while len(qs) < n:
        qs.append(f"Q: which river flows through city number {len(qs)}? A:")
    return qs


class Server:
    """`imprag serve` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, index: Path, batch_size: int, wait_ms: float, threads: int, log: Path):
        self.model = model
        self.cmd = [sys.executable, "-m", "imprag", "serve", "--model", str(model), "--index", str(index)]
        self.cmd += [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-batch-size",
            str(batch_size),
            "--max-wait-ms",
            str(wait_ms),
        ]
        self.cmd += ["--threads", str(threads), "--log-level", "warning", "--max-concurrent", "1024"]
        self.log = log
        self.url = ""

    def __enter__(self) -> Server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("IMPRAG_API_KEY", None)
        self.err = self.log.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sel.select(timeout=0.5):
                line = self.proc.stdout.readline()
                self.url = line.split(" at ")[1].split()[0]
                return self
        self.__exit__()
        raise SystemExit(f"the server did not start; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.err.close()


async def load(
    url: str, model_name: str, qs: list[str], n_requests: int, concurrency: int, max_tokens: int, k: int
) -> dict:
    import httpx
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    latencies: list[float] = []
    errors: list[str] = []
    next_request = 0

    async def one(i: int) -> None:
        t = time.perf_counter()
        try:
            r = await client.completions.create(
                model=model_name,
                prompt=qs[i % len(qs)],
                max_tokens=max_tokens,
                temperature=0,
                extra_body={"k": k},
            )
            if not r.choices or r.usage is None or r.usage.completion_tokens < 1:
                errors.append(f"request {i}: empty answer")
                return
            latencies.append(time.perf_counter() - t)
        except Exception as e:  # counted, not raised: the run reports every failure
            errors.append(f"request {i}: {type(e).__name__}: {e}")

    async def client_loop() -> None:
        nonlocal next_request
        while next_request < n_requests:  # bounded: each pass takes one of the n_requests
            i = next_request
            next_request += 1
            await one(i)

    # warm-up (not measured): one request, then one round of `concurrency` requests
    await one(0)
    await asyncio.gather(*(one(i) for i in range(concurrency)))
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    health = httpx.get(url.removesuffix("/v1") + "/health", timeout=30).json()
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    return {
        "requests": n_requests,
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_s": pct(50),
        "p99_s": pct(99),
        "mean_s": statistics.fmean(lat) if lat else float("nan"),
        "mean_batch_size": health.get("mean_batch_size"),
    }


async def overload(
    url: str,
    model_name: str,
    qs: list[str],
    n_requests: int,
    concurrency: int,
    max_tokens: int,
    k: int,
    abandon_every: int,
    timeout_s: float,
) -> dict:
    """Clients that keep sending as soon as they are answered or refused (no retries, no back-off)."""
    import httpx
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=timeout_s)
    outcomes: dict[str, int] = {}
    answered: list[float] = []
    refused: list[float] = []
    abandoned = 0
    next_request = 0

    def count(key: str) -> None:
        outcomes[key] = outcomes.get(key, 0) + 1

    async def one(i: int) -> None:
        nonlocal abandoned
        t = time.perf_counter()
        args = dict(model=model_name, prompt=qs[i % len(qs)], max_tokens=max_tokens, temperature=0)
        try:
            if abandon_every and i % abandon_every == abandon_every - 1:
                stream = await client.completions.create(**args, stream=True, extra_body={"k": k})
                async for _ in stream:  # the first chunk, then leave mid-stream
                    break
                await stream.close()
                abandoned += 1
                count("200 (stream left after the first chunk)")
                return
            await client.completions.create(**args, extra_body={"k": k})
            answered.append(time.perf_counter() - t)
            count("200")
        except openai.APIStatusError as e:
            refused.append(time.perf_counter() - t)
            count(str(e.status_code))
        except openai.APITimeoutError:
            count("timeout")
        except Exception as e:  # connection errors and the like: counted, not raised
            count(type(e).__name__)

    async def client_loop() -> None:
        nonlocal next_request
        while next_request < n_requests:  # bounded: each pass takes one of the n_requests
            i = next_request
            next_request += 1
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    health_url = url.removesuffix("/v1") + "/health"
    active = None
    for _ in range(100):  # abandoned streams are dropped at the worker's next decode step
        active = httpx.get(health_url, timeout=30).json().get("active_requests")
        if active == 0:
            break
        await asyncio.sleep(0.1)

    def pct(values: list[float], p: float) -> float:
        v = sorted(values)
        return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")

    return {
        "requests": n_requests,
        "outcomes": dict(sorted(outcomes.items())),
        "abandoned_streams": abandoned,
        "wall_s": wall,
        "answered_p50_s": pct(answered, 50),
        "answered_p99_s": pct(answered, 99),
        "refused_p50_s": pct(refused, 50),
        "refused_p99_s": pct(refused, 99),
        "active_after": active,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=None, help="model folder (default: build a small random one)"
    )
    ap.add_argument("--index", type=Path, default=None, help="its index folder (with --model)")
    ap.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="model built without --model (default tiny)"
    )
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/imprag-serve-bench"), help="where built assets and logs go"
    )
    ap.add_argument(
        "--passages-limit", type=int, default=2000, help="passages indexed when building (default 2000)"
    )
    ap.add_argument("--requests", type=int, default=256, help="measured requests per server (default 256)")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request (default 16)")
    ap.add_argument("-k", type=int, default=4, help="passages read per request (default 4)")
    ap.add_argument(
        "--batch-size", type=int, default=32, help="--max-batch-size of the batching server (default 32)"
    )
    ap.add_argument(
        "--wait-ms", type=float, default=10.0, help="--max-wait-ms of the batching server (default 10)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--overload", action="store_true", help="the overload run (see above)")
    ap.add_argument(
        "--max-concurrent", type=int, default=8, help="--max-concurrent of the overload server (default 8)"
    )
    ap.add_argument(
        "--abandon-every",
        type=int,
        default=4,
        help="overload: every N-th request leaves its stream (default 4)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="overload: client timeout in s, counted as a hang (default 60)",
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    for name in ("httpx", "httpx2", "openai"):  # no line per request
        logging.getLogger(name).setLevel(logging.WARNING)
    if (args.model is None) != (args.index is None):
        ap.error("give both --model and --index, or neither")
    model, index = (
        (args.model, args.index) if args.model else build_assets(args.work, args.passages_limit, args.size)
    )
    args.work.mkdir(parents=True, exist_ok=True)
    qs = prompts(max(args.requests, args.concurrency))
    if args.overload:
        return run_overload(args, model, index, qs)
    results = {}
    for name, batch, wait in (("batched", args.batch_size, args.wait_ms), ("batch size 1", 1, 0.0)):
        with Server(model, index, batch, wait, args.threads, args.work / f"server-b{batch}.log") as server:
            print(
                f"[{name}] {server.url} (max batch {batch}, wait {wait:g} ms): {args.requests} requests, {args.concurrency} clients ...",
                flush=True,
            )
            r = asyncio.run(
                load(
                    server.url,
                    Path(model).resolve().name,
                    qs,
                    args.requests,
                    args.concurrency,
                    args.max_tokens,
                    args.k,
                )
            )
            results[name] = r
            print(
                f"[{name}] errors {r['errors']}  p50 {r['p50_s']:.3f} s  p99 {r['p99_s']:.3f} s  "
                f"{r['requests_per_s']:.2f} req/s  mean batch {r['mean_batch_size']}",
                flush=True,
            )
            for e in r["error_samples"]:
                print(f"  {e}")
    b, s = results["batched"], results["batch size 1"]
    ratio = b["requests_per_s"] / s["requests_per_s"]
    print()
    print("| server | errors | p50 latency (s) | p99 latency (s) | requests/s | mean batch |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['errors']} | {r['p50_s']:.3f} | {r['p99_s']:.3f} | {r['requests_per_s']:.2f} | {r['mean_batch_size']} |"
        )
    print(f"\nthroughput ratio batched / batch size 1: {ratio:.2f}x (aim >= 2x)")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.out:
        from imprag.io import atomic_write_json

        atomic_write_json(args.out, {"settings": settings, "results": results, "ratio": ratio})
    return 1 if b["errors"] or s["errors"] else 0


def run_overload(args: argparse.Namespace, model: Path, index: Path, qs: list[str]) -> int:
    server = Server(
        model, index, args.batch_size, args.wait_ms, args.threads, args.work / "server-overload.log"
    )
    server.cmd[server.cmd.index("--max-concurrent") + 1] = str(args.max_concurrent)
    with server:
        print(
            f"[overload] {server.url} (max batch {args.batch_size}, --max-concurrent {args.max_concurrent}): "
            f"{args.requests} requests, {args.concurrency} clients, every {args.abandon_every}th stream left early",
            flush=True,
        )
        r = asyncio.run(
            overload(
                server.url,
                Path(model).resolve().name,
                qs,
                args.requests,
                args.concurrency,
                args.max_tokens,
                args.k,
                args.abandon_every,
                args.timeout,
            )
        )
    print("\n| requests | outcomes | answered p50 / p99 (s) | refused p50 / p99 (s) | active after |")
    print("|---|---|---|---|---|")
    outcomes = ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items())
    print(
        f"| {r['requests']} | {outcomes} | {r['answered_p50_s']:.3f} / {r['answered_p99_s']:.3f} | "
        f"{r['refused_p50_s']:.3f} / {r['refused_p99_s']:.3f} | {r['active_after']} |"
    )
    if args.out:
        from imprag.io import atomic_write_json

        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        atomic_write_json(args.out, {"settings": settings, "overload": r})
    bad = [k for k in r["outcomes"] if not k.startswith(("200", "429", "503"))]
    return 1 if bad or r["active_after"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
