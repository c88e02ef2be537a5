"""The OpenAI-compatible HTTP API over one loaded model + index (FastAPI).

    POST /v1/completions       prompt (string or list of strings) -> choices, usage, retrieval
    POST /v1/chat/completions  messages -> one assistant message (prompt rule: imprag/serve/prompting.py)
    POST /v1/retrieve          {"input": str | [str], "k"} -> the passages the implicit query finds (no decoding)
    GET  /v1/models            the one served model
    GET  /health               liveness, queue size and batch statistics (open even with an API key)

Every answer carries `retrieval`: [{"index": choice, "rank", "id", "title", "score"}, ...] best first; a
streamed answer (server-sent events, `data: {chunk}` lines ending with `data: [DONE]`) carries it in the
first chunk of each choice. Requests go through the batching queue (imprag/serve/batching.py). Errors use
the OpenAI shape {"error": {"message", "type", "param", "code"}} with a 4xx status for anything the
client can fix: 400 bad JSON / wrong types / unknown fields / out-of-range values / prompt too long,
401 API key, 404 unknown model or path, 413 body too large, 429 too many concurrent requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imprag.errors import UserError
from imprag.model.window import check_model_window
from imprag.serve.batching import (
    BatchConfig,
    Delta,
    Engine,
    Failed,
    Finished,
    Job,
    Overloaded,
    Result,
    Retrieved,
    Sampling,
    Stopped,
)
from imprag.serve.config import ServeConfig
from imprag.serve.guards import Guard
from imprag.serve.prompting import ChatFormatter, message_text
from imprag.serve.schemas import (
    APIError,
    ChatRequest,
    CompletionRequest,
    RetrieveRequest,
    _Generate,
    error_body,
    validation_error,
)

log = logging.getLogger(__name__)

MAX_STOPS = 4  # as in the OpenAI API
POLL_S = 1.0  # how often a waiting request checks that the worker is still alive


@dataclass
class Service:
    """What the routes share: the model, index, engine and the settings resolved against the model."""

    model: Any
    index: Any
    engine: Engine
    config: ServeConfig
    formatter: ChatFormatter
    tokenizer: (
        Any  # a copy of the model's tokenizer for counting on the event loop (the worker owns the original)
    )
    max_prompt_tokens: int
    default_k: int
    started: int

    @classmethod
    def build(cls, model: Any, index: Any, config: ServeConfig) -> Service:
        config.validate()
        k_model = model.config.k
        if config.k is not None:
            model.config.check_reads(config.k)
        # the same check as at model load, now with the answer budget (refuses "no room for a prompt")
        window = check_model_window(model, config.max_tokens_cap, "--max-tokens-cap")
        max_prompt = min(config.max_prompt_tokens, window)
        if max_prompt < config.max_prompt_tokens:
            log.warning(
                "--max-prompt-tokens lowered to %d: the window minus k*l_max=%d and --max-tokens-cap %d",
                max_prompt,
                model.config.prompt_offset,
                config.max_tokens_cap,
            )
        try:
            tokenizer = copy.deepcopy(model.tokenizer)
        except Exception:  # a tokenizer that cannot be copied is shared (reads only)
            tokenizer = model.tokenizer
        batch = BatchConfig(config.max_batch_size, config.max_wait_ms, config.max_concurrent, config.seed)
        return cls(
            model=model,
            index=index,
            engine=Engine(model, index, batch),
            config=config,
            formatter=ChatFormatter(model.tokenizer, config.chat_template),
            tokenizer=tokenizer,
            max_prompt_tokens=max_prompt,
            default_k=k_model if config.k is None else config.k,
            started=int(time.time()),
        )

    # ------------------------------------------------------------------ request checks
    def count_tokens(self, text: str) -> int:
        """Tokens the model will see for `text` (its BOS policy included, at least 1)."""
        return max(1, len(self.tokenizer(text, add_special_tokens=True)["input_ids"]))

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.config.model_name:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves `{self.config.model_name}`",
                param="model",
                code="model_not_found",
            )

    def check_prompt(self, text: str, param: str) -> int:
        n = self.count_tokens(text)
        if n > self.max_prompt_tokens:
            raise APIError(
                400,
                f"This server's maximum prompt length is {self.max_prompt_tokens} tokens; your prompt has {n} tokens. "
                "Shorten it.",
                param=param,
                code="context_length_exceeded",
            )
        return n

    def k_for(self, k: int | None) -> int:
        if k is None:
            return self.default_k
        if not 0 <= k <= self.model.config.k:
            raise APIError(
                400,
                f"k must be between 0 and {self.model.config.k} (the model's k), got {k}",
                param="k",
                code="invalid_value",
            )
        return k

    def sampling(
        self, req: _Generate, max_tokens: int | None, default: int, param: str = "max_tokens"
    ) -> Sampling:
        bad = req.unsupported()
        if bad is not None:
            raise APIError(400, bad[1], param=bad[0], code="unsupported_value")
        n = default if max_tokens is None else max_tokens
        cap = self.config.max_tokens_cap
        if n < 1:
            raise APIError(400, f"{param} must be at least 1, got {n}", param=param, code="invalid_value")
        if n > cap:
            raise APIError(
                400, f"{param} is at most {cap} on this server, got {n}", param=param, code="invalid_value"
            )
        stops = req.stops()
        if len(stops) > MAX_STOPS:
            raise APIError(
                400,
                f"stop: at most {MAX_STOPS} sequences, got {len(stops)}",
                param="stop",
                code="invalid_value",
            )
        return Sampling(n, float(req.temperature), float(req.top_p), tuple(s for s in stops if s), req.seed)

    # ------------------------------------------------------------------ running jobs
    def submit(self, prompts: list[str], counts: list[int], k: int, sampling: Sampling | None, stream: bool):
        """Queue one job per prompt; returns (jobs, asyncio queue of (index, event))."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        def emitter(i: int):
            def emit(event: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                    loop.call_soon_threadsafe(queue.put_nowait, (i, event))

            return emit

        jobs = [
            Job(prompt=p, k=k, emit=emitter(i), sampling=sampling, stream=stream, prompt_tokens=c)
            for i, (p, c) in enumerate(zip(prompts, counts))
        ]
        try:
            self.engine.submit(jobs)
        except Overloaded as e:
            raise APIError(
                429,
                str(e),
                type="rate_limit_error",
                code="too_many_concurrent_requests",
                headers={"Retry-After": "1"},
            ) from None
        except Stopped as e:
            raise APIError(503, str(e), type="server_error", code="shutting_down") from None
        return jobs, queue

    async def next_event(self, queue: asyncio.Queue) -> tuple[int, Any]:
        while True:
            try:
                return await asyncio.wait_for(queue.get(), POLL_S)
            except asyncio.TimeoutError:
                if not self.engine.alive and queue.empty():
                    raise APIError(
                        503, "the model worker has stopped", type="server_error", code="worker_stopped"
                    ) from None

    async def results(self, jobs: list[Job], queue: asyncio.Queue) -> list[Result]:
        out: list[Result | None] = [None] * len(jobs)
        try:
            while any(r is None for r in out):
                i, event = await self.next_event(queue)
                if isinstance(event, Finished):
                    out[i] = event.result
                elif isinstance(event, Failed):
                    raise failure(event.error)
        finally:
            for j in jobs:
                j.cancel()
        return [r for r in out if r is not None]


def failure(error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, UserError):
        return APIError(400, str(error), code="invalid_value")
    return APIError(
        500, f"the model failed on this batch ({type(error).__name__}: {error})", type="server_error"
    )


def retrieval_entries(
    index: int, passages: list[dict[str, Any]], with_text: bool = False
) -> list[dict[str, Any]]:
    out = []
    for rank, p in enumerate(passages, start=1):
        entry = {
            "index": index,
            "rank": rank,
            "id": p.get("id"),
            "title": p.get("title"),
            "score": p.get("score"),
        }
        if with_text:
            entry["text"] = p.get("text")
        out.append(entry)
    return out


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def parse(request: Request, model: type[BaseModel]) -> Any:
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise validation_error(e) from None


# ---------------------------------------------------------------------------- the app
def create_app(model: Any, index: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app (with the key/body-size guard; `app.state.service` holds the engine). The engine starts with the app's lifespan
    and, on shutdown, finishes every queued request before the worker ends."""
    service = Service.build(model, index, config or ServeConfig())
    cfg = service.config

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        log.info(
            "serving %s (%d passages, batches of up to %d)", cfg.model_name, len(index), cfg.max_batch_size
        )
        try:
            yield
        finally:
            await asyncio.to_thread(service.engine.stop)

    app = FastAPI(title="imprag", version="0.1.0", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(error_body(message, kind, None, str(e.status_code)), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(str(e), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(
            error_body(f"internal error ({type(e).__name__})", "server_error"), status_code=500
        )

    fingerprint = f"imprag-{index.fingerprint}" if hasattr(index, "fingerprint") else None

    # ------------------------------------------------------------------ info routes
    @app.get("/health")
    async def health() -> JSONResponse:
        e = service.engine
        body = {
            "status": "ok" if e.alive else "stopped",
            "model": cfg.model_name,
            "passages": len(index),
            "active_requests": e.active,
            "batches": e.stats.batches,
            "mean_batch_size": round(e.stats.mean_batch_size, 3),
        }
        return JSONResponse(body, status_code=200 if e.alive else 503)

    def model_card() -> dict[str, Any]:
        return {"id": cfg.model_name, "object": "model", "created": service.started, "owned_by": "imprag"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str) -> dict[str, Any]:
        service.check_model(name)
        return model_card()

    # ------------------------------------------------------------------ retrieval only
    @app.post("/v1/retrieve")
    async def retrieve(request: Request) -> dict[str, Any]:
        req: RetrieveRequest = await parse(request, RetrieveRequest)
        service.check_model(req.model)
        prompts = [req.input] if isinstance(req.input, str) else list(req.input)
        check_prompt_list(prompts, "input")
        k = service.k_for(req.k)
        if k == 0:
            raise APIError(400, "k must be at least 1 for retrieval", param="k", code="invalid_value")
        counts = [service.check_prompt(p, "input") for p in prompts]
        jobs, queue = service.submit(prompts, counts, k, None, False)
        results = await service.results(jobs, queue)
        data = [
            {"object": "retrieval", "index": i, "passages": retrieval_entries(i, r.passages, with_text=True)}
            for i, r in enumerate(results)
        ]
        total = sum(counts)
        return {
            "object": "list",
            "model": cfg.model_name,
            "data": data,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    def check_prompt_list(prompts: list[str], param: str) -> None:
        if not prompts:
            raise APIError(400, f"{param}: give at least one prompt", param=param, code="invalid_value")
        if len(prompts) > cfg.max_prompts:
            raise APIError(
                400,
                f"{param}: at most {cfg.max_prompts} prompts per request",
                param=param,
                code="invalid_value",
            )

    # ------------------------------------------------------------------ completions
    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await parse(request, CompletionRequest)
        service.check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        check_prompt_list(prompts, "prompt")
        sampling = service.sampling(req, req.max_tokens, cfg.completion_max_tokens)
        k = service.k_for(req.k)
        counts = [service.check_prompt(p, "prompt") for p in prompts]
        jobs, queue = service.submit(prompts, counts, k, sampling, req.stream)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": cfg.model_name}
        if fingerprint:
            head["system_fingerprint"] = fingerprint

        def choice(i: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}

        if req.stream:
            return stream_response(service, jobs, queue, head, choice, lambda i: choice(i, "", None), req)
        results = await service.results(jobs, queue)
        return {
            **head,
            "choices": [choice(i, r.text, r.finish_reason) for i, r in enumerate(results)],
            "usage": usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
            "retrieval": [e for i, r in enumerate(results) for e in retrieval_entries(i, r.passages)],
        }

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req: ChatRequest = await parse(request, ChatRequest)
        service.check_model(req.model)
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        sampling = service.sampling(req, limit, cfg.chat_max_tokens or cfg.max_tokens_cap, param)
        k = service.k_for(req.k)
        messages = [{"role": m.role, "content": message_text(m.content)} for m in req.messages]
        try:
            prompt = service.formatter(messages)
        except UserError as e:
            raise APIError(400, str(e), param="messages", code="invalid_value") from None
        except Exception as e:  # a chat template that refuses this conversation (jinja TemplateError, ...)
            raise APIError(
                400, f"messages: the chat template failed ({e})", param="messages", code="invalid_value"
            ) from None
        count = service.check_prompt(prompt, "messages")
        jobs, queue = service.submit([prompt], [count], k, sampling, req.stream)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion", "created": created, "model": cfg.model_name}
        if fingerprint:
            head["system_fingerprint"] = fingerprint

        if req.stream:
            chunk_head = {**head, "object": "chat.completion.chunk"}

            def delta(i: int, text: str, finish: str | None) -> dict[str, Any]:
                return {
                    "index": i,
                    "delta": {"content": text} if text else {},
                    "logprobs": None,
                    "finish_reason": finish,
                }

            def first(i: int) -> dict[str, Any]:
                return {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }

            return stream_response(service, jobs, queue, chunk_head, delta, first, req)
        (r,) = await service.results(jobs, queue)
        return {
            **head,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": r.finish_reason,
                }
            ],
            "usage": usage(r.prompt_tokens, r.completion_tokens),
            "retrieval": retrieval_entries(0, r.passages),
        }

    app.add_middleware(Guard, max_body_bytes=cfg.max_body_bytes, api_key=cfg.api_key)
    return app


def stream_response(
    service: Service, jobs: list[Job], queue: asyncio.Queue, head, choice, first, req: _Generate
):
    """Server-sent events: per choice a first chunk (with `retrieval`), text deltas, a chunk with the
    finish_reason; then a usage chunk when stream_options.include_usage; then `data: [DONE]`."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}

    async def events() -> AsyncIterator[str]:
        prompt_tokens = completion_tokens = 0
        left = len(jobs)
        try:
            while left:
                try:
                    i, event = await service.next_event(queue)
                except APIError as e:
                    yield sse(e.body())
                    return
                if isinstance(event, Retrieved):
                    yield sse(
                        {
                            **head,
                            "choices": [first(i)],
                            **extra,
                            "retrieval": retrieval_entries(i, event.passages),
                        }
                    )
                elif isinstance(event, Delta):
                    yield sse({**head, "choices": [choice(i, event.text, None)], **extra})
                elif isinstance(event, Finished):
                    left -= 1
                    r = event.result
                    prompt_tokens += r.prompt_tokens
                    completion_tokens += r.completion_tokens
                    yield sse({**head, "choices": [choice(i, "", r.finish_reason)], **extra})
                elif isinstance(event, Failed):
                    yield sse(failure(event.error).body())
                    return
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
            yield sse("[DONE]")
        finally:
            for j in jobs:  # finished, or the client went away: either way the worker may drop them
                j.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
