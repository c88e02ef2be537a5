"""What the HTTP routes share (imprag/serve/routes.py): the Service (model, index, batching engine and the
settings resolved against the model), request checks, and the response pieces (retrieval entries,
usage, server-sent events)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

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
from imprag.serve.prompting import ChatFormatter
from imprag.serve.schemas import (
    APIError,
    _Generate,
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

    @property
    def fingerprint(self) -> str | None:
        """`system_fingerprint` of every answer: names the index's weights, so clients see a re-index."""
        return f"imprag-{self.index.fingerprint}" if hasattr(self.index, "fingerprint") else None

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.config.model_name,
            "object": "model",
            "created": self.started,
            "owned_by": "imprag",
        }

    # ------------------------------------------------------------------ request checks
    def check_prompt_list(self, prompts: list[str], param: str) -> None:
        if not prompts:
            raise APIError(400, f"{param}: give at least one prompt", param=param, code="invalid_value")
        if len(prompts) > self.config.max_prompts:
            raise APIError(
                400,
                f"{param}: at most {self.config.max_prompts} prompts per request",
                param=param,
                code="invalid_value",
            )

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
    """The `retrieval` entries of choice `index`: its passages best first, ranked from 1."""
    keys = ("id", "title", "score", "text") if with_text else ("id", "title", "score")
    return [{"index": index, "rank": r, **{k: p.get(k) for k in keys}} for r, p in enumerate(passages, 1)]


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
