"""`imprag serve`: an OpenAI-compatible HTTP server that answers with implicitly retrieved passages.

    imprag serve --model ckpt --index wiki-index [--port 8000] [--api-key KEY]
    curl -s localhost:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "ckpt", "prompt": "Q: who wrote Hamlet? A:", "max_tokens": 16, "temperature": 0}'

The model and index are loaded once; an index built by other weights is refused (exit 2). Routes, limits
and error shapes: imprag/serve/app.py; batching: imprag/serve/batching.py; chat prompt rule:
imprag/serve/prompting.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Literal

from imprag.config_io import option, same_named
from imprag.device import DEVICE_HELP, THREADS_HELP, pick_device, set_threads
from imprag.errors import UserError
from imprag.serve.config import ServeConfig

log = logging.getLogger(__name__)
_D = ServeConfig()  # the defaults of the flags that are ServeConfig fields


@dataclasses.dataclass(kw_only=True)
class Options:
    """The server's flags; those named as a ServeConfig field are that field (config_from_args)."""

    model: Path = option(help="ImpRAG / Hugging Face model folder")
    index: Path = option(help="index folder made by `imprag index` with this model")
    host: str = option("127.0.0.1", "address to bind (default 127.0.0.1: this machine only)")
    port: int = option(8000, "TCP port (default 8000; 0 = any free port, printed)")
    api_key: str | None = option(
        None, "require `Authorization: Bearer KEY` (default: env IMPRAG_API_KEY, else no key)"
    )
    model_name: str | None = option(None, "the `model` id clients send (default: the model folder's name)")
    k: int | None = option(
        None, "passages per prompt when a request gives no `k` (default: the model's k)", flags=("-k",)
    )
    max_batch_size: int = option(_D.max_batch_size, "requests decoded together")
    max_wait_ms: float = option(_D.max_wait_ms, "how long a request may wait for its batch to fill")
    max_concurrent: int = option(_D.max_concurrent, "requests queued or running at once; more get 429")
    max_prompt_tokens: int = option(_D.max_prompt_tokens, "longest prompt accepted, in tokens")
    max_tokens_cap: int = option(_D.max_tokens_cap, "largest max_tokens a request may ask")
    max_body_bytes: int = option(_D.max_body_bytes, "largest request body")
    max_prompts: int = option(_D.max_prompts, "prompts per completions/retrieve request")
    completion_max_tokens: int = option(
        _D.completion_max_tokens, "max_tokens of a completion request that gives none (as OpenAI)"
    )
    chat_max_tokens: int | None = option(
        None, "max_tokens of a chat request that gives none (default: --max-tokens-cap)"
    )
    chat_template: str = option(
        _D.chat_template,
        "how chat messages become a prompt: auto (tokenizer's template if any, else lines), tokenizer, lines "
        "('role: content' lines then 'assistant:'), or a text with {prompt} = the last user message, e.g. 'Q: {prompt} A:'",
    )
    seed: int | None = option(None, "seed of the sampling generator (default: random)")
    passages: Path | None = option(None, "the passages file, if it moved since indexing")
    allow_fingerprint_mismatch: bool = option(False, "serve an index built by other weights anyway")
    device: str = option("auto", DEVICE_HELP)
    threads: int | None = option(None, THREADS_HELP)
    dtype: Literal["float32", "bfloat16", "float16"] | None = option(None, "weights' dtype (default float32)")
    shutdown_timeout: float = option(60.0, "seconds in-flight requests get to finish on SIGINT/SIGTERM")
    log_level: Literal["debug", "info", "warning", "error"] = option("info", "server log level")


def config_from_args(args: Options) -> ServeConfig:
    """Each ServeConfig field is the flag of the same name."""
    return same_named(
        ServeConfig,
        args,
        model_name=args.model_name or Path(args.model).resolve().name,
        api_key=args.api_key if args.api_key is not None else (os.environ.get("IMPRAG_API_KEY") or None),
    ).validate()


def run(args: Options) -> int:
    from imprag.index.faiss_index import Index
    from imprag.model.imprag import ImpRAG
    from imprag.serve.app import create_app
    from imprag.serve.server import bind, is_loopback, serve_forever, url_of

    config = config_from_args(args)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be 0..65535")
    set_threads(args.threads)
    model = ImpRAG.from_pretrained(args.model, dtype=args.dtype, device=pick_device(args.device))
    index = Index.load(
        args.index, model=model, allow_mismatch=args.allow_fingerprint_mismatch, passages=args.passages
    )
    app = create_app(model, index, config)
    sock = bind(args.host, args.port)
    if not is_loopback(args.host) and config.api_key is None:
        log.warning(
            "listening on %s without an API key: anyone who can reach this address can use the model",
            args.host,
        )
    print(
        f"imprag serve: {config.model_name} at {url_of(sock)}/v1 ({len(index)} passages, k={app.state.service.default_k}, "
        f"batches of up to {config.max_batch_size}, {'API key required' if config.api_key else 'no API key'})",
        flush=True,
    )
    serve_forever(app, sock, args.log_level, args.shutdown_timeout)
    print("imprag serve: stopped", file=sys.stderr, flush=True)
    return 0
