"""The HTTP routes, in three routers that each take the app's Service as a dependency.

info        GET /health, GET /v1/models, GET /v1/models/{name}
retrieval   POST /v1/retrieve
generation  POST /v1/completions, POST /v1/chat/completions
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from imprag.errors import UserError
from imprag.serve.prompting import message_text
from imprag.serve.schemas import APIError, ChatRequest, CompletionRequest, RetrieveRequest
from imprag.serve.service import Service, parse, retrieval_entries, stream_response, usage


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

info = APIRouter()
retrieval = APIRouter()
generation = APIRouter()


@info.get("/health")
async def health(service: ServiceDep) -> JSONResponse:
    e = service.engine
    body = {
        "status": "ok" if e.alive else "stopped",
        "model": service.config.model_name,
        "passages": len(service.index),
        "active_requests": e.active,
        "batches": e.stats.batches,
        "mean_batch_size": round(e.stats.mean_batch_size, 3),
    }
    return JSONResponse(body, status_code=200 if e.alive else 503)


@info.get("/v1/models")
async def models(service: ServiceDep) -> dict[str, Any]:
    return {"object": "list", "data": [service.model_card()]}


@info.get("/v1/models/{name:path}")
async def model_info(name: str, service: ServiceDep) -> dict[str, Any]:
    service.check_model(name)
    return service.model_card()


@retrieval.post("/v1/retrieve")
async def retrieve(request: Request, service: ServiceDep) -> dict[str, Any]:
    req: RetrieveRequest = await parse(request, RetrieveRequest)
    service.check_model(req.model)
    prompts = [req.input] if isinstance(req.input, str) else list(req.input)
    service.check_prompt_list(prompts, "input")
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
        "model": service.config.model_name,
        "data": data,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


def _head(service: Service, prefix: str, kind: str) -> dict[str, Any]:
    """The fields every answer (and every streamed chunk) starts with."""
    head = {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": service.config.model_name,
    }
    if service.fingerprint:
        head["system_fingerprint"] = service.fingerprint
    return head


@generation.post("/v1/completions")
async def completions(request: Request, service: ServiceDep) -> Any:
    cfg = service.config
    req: CompletionRequest = await parse(request, CompletionRequest)
    service.check_model(req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    service.check_prompt_list(prompts, "prompt")
    sampling = service.sampling(req, req.max_tokens, cfg.completion_max_tokens)
    k = service.k_for(req.k)
    counts = [service.check_prompt(p, "prompt") for p in prompts]
    jobs, queue = service.submit(prompts, counts, k, sampling, req.stream)
    head = _head(service, "cmpl", "text_completion")

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


@generation.post("/v1/chat/completions")
async def chat(request: Request, service: ServiceDep) -> Any:
    cfg = service.config
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
    head = _head(service, "chatcmpl", "chat.completion")

    if req.stream:
        chunk_head = {**head, "object": "chat.completion.chunk"}

        def delta(i: int, text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
            change = {"role": "assistant", "content": ""} if first else {"content": text} if text else {}
            return {"index": i, "delta": change, "logprobs": None, "finish_reason": finish}

        return stream_response(
            service, jobs, queue, chunk_head, delta, lambda i: delta(i, "", None, True), req
        )
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
