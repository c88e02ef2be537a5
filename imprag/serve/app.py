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
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imprag.serve import routes
from imprag.serve.config import ServeConfig
from imprag.serve.guards import Guard
from imprag.serve.schemas import APIError, error_body
from imprag.serve.service import Service

log = logging.getLogger(__name__)


def create_app(model: Any, index: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app (with the key/body-size guard; `app.state.service` holds the engine). The engine starts
    with the app's lifespan and, on shutdown, finishes every queued request before the worker ends."""
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
    add_error_handlers(app)
    for router in (routes.info, routes.retrieval, routes.generation):
        app.include_router(router)
    app.add_middleware(Guard, max_body_bytes=cfg.max_body_bytes, api_key=cfg.api_key)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error in the OpenAI shape; 400 for what the client can fix, 500 (logged) for the rest."""

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
