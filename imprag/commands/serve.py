"""`imprag serve`: an OpenAI-compatible HTTP server that answers with implicitly retrieved passages.

    imprag serve --model ckpt --index wiki-index [--port 8000] [--api-key KEY]
    curl -s localhost:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "ckpt", "prompt": "Q: who wrote Hamlet? A:", "max_tokens": 16, "temperature": 0}'

The model and index are loaded once; an index built by other weights is refused (exit 2). Routes, limits
and error shapes: imprag/serve/app.py; batching: imprag/serve/batching.py; chat prompt rule:
imprag/serve/prompting.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from imprag.device import DEVICE_HELP, pick_device
from imprag.errors import UserError
from imprag.serve.config import ServeConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    parser.add_argument("--model", type=Path, required=True, help="ImpRAG / Hugging Face model folder")
    parser.add_argument(
        "--index", type=Path, required=True, help="index folder made by `imprag index` with this model"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port, printed)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer KEY` (default: env IMPRAG_API_KEY, else no key)",
    )
    parser.add_argument(
        "--model-name", default=None, help="the `model` id clients send (default: the model folder's name)"
    )
    parser.add_argument(
        "-k",
        type=int,
        default=None,
        help="passages per prompt when a request gives no `k` (default: the model's k)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help=f"requests decoded together (default {d.max_batch_size})",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"how long a request may wait for its batch to fill (default {d.max_wait_ms:g})",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=d.max_concurrent,
        help=f"requests queued or running at once; more get 429 (default {d.max_concurrent})",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=d.max_prompt_tokens,
        help=f"longest prompt accepted, in tokens (default {d.max_prompt_tokens})",
    )
    parser.add_argument(
        "--max-tokens-cap",
        type=int,
        default=d.max_tokens_cap,
        help=f"largest max_tokens a request may ask (default {d.max_tokens_cap})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help=f"largest request body (default {d.max_body_bytes})",
    )
    parser.add_argument(
        "--max-prompts",
        type=int,
        default=d.max_prompts,
        help=f"prompts per completions/retrieve request (default {d.max_prompts})",
    )
    parser.add_argument(
        "--completion-max-tokens",
        type=int,
        default=d.completion_max_tokens,
        help=f"max_tokens of a completion request that gives none (default {d.completion_max_tokens}, as OpenAI)",
    )
    parser.add_argument(
        "--chat-max-tokens",
        type=int,
        default=None,
        help="max_tokens of a chat request that gives none (default: --max-tokens-cap)",
    )
    parser.add_argument(
        "--chat-template",
        default=d.chat_template,
        help="how chat messages become a prompt: auto (tokenizer's template if any, else lines), tokenizer, lines "
        "('role: content' lines then 'assistant:'), or a text with {prompt} = the last user message, e.g. 'Q: {prompt} A:'",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the sampling generator (default: random)"
    )
    parser.add_argument(
        "--passages", type=Path, default=None, help="the passages file, if it moved since indexing"
    )
    parser.add_argument(
        "--allow-fingerprint-mismatch",
        action="store_true",
        help="serve an index built by other weights anyway",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often fastest for small models on busy CPUs)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights' dtype (default float32)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=60.0,
        help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default 60)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="server log level (default info)",
    )


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Each ServeConfig field is the flag of the same name."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}
    values["model_name"] = args.model_name or Path(args.model).resolve().name
    if args.api_key is None:
        values["api_key"] = os.environ.get("IMPRAG_API_KEY") or None
    return ServeConfig(**values).validate()


def run(args: argparse.Namespace) -> int:
    from imprag.index.faiss_index import Index
    from imprag.model.imprag import ImpRAG
    from imprag.serve.app import create_app
    from imprag.serve.server import bind, is_loopback, serve_forever, url_of

    config = config_from_args(args)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be 0..65535")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
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
