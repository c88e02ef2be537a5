"""ASGI middleware in front of every route: the API key check and the request body size limit.

Both answer in the OpenAI error shape before the route runs: 401 without `Authorization: Bearer <key>`
(when a key is set; GET /health stays open for probes), 413 for a body over the limit, whether it
announces its length (Content-Length) or streams it (chunked: counted as it arrives),
408 for a body that stops arriving for `body_timeout_s`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from imprag.serve.schemas import error_body

OPEN_PATHS = ("/health",)


async def send_json(
    send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def bearer_ok(header: str | None, key: str) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class Guard:
    """Wraps an ASGI app: checks the API key, then bounds the body to `max_body_bytes`."""

    def __init__(
        self, app: Any, max_body_bytes: int, api_key: str | None = None, body_timeout_s: float = 30.0
    ):
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            if not bearer_ok(headers.get("authorization"), self.api_key):
                text = (
                    "Incorrect API key provided"
                    if headers.get("authorization")
                    else "Missing API key: send the header `Authorization: Bearer <key>`"
                )
                body = error_body(text, "invalid_request_error", None, "invalid_api_key")
                await send_json(send, 401, body, {"www-authenticate": "Bearer"})
                return
        limit = self.max_body_bytes
        too_large = error_body(
            f"the request body exceeds the server's limit of {limit} bytes",
            "invalid_request_error",
            None,
            "request_too_large",
        )
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await send_json(
                    send, 400, error_body("invalid Content-Length header", "invalid_request_error")
                )
                return
            if declared > limit:
                await send_json(send, 413, too_large)
                return
        # Read the whole (bounded) body here, then replay it: the route never sees more than the limit.
        chunks: list[bytes] = []
        received = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                body = error_body(
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    "invalid_request_error",
                    None,
                    "timeout",
                )
                await send_json(send, 408, body, {"connection": "close"})
                return
            if message["type"] != "http.request":  # client gone before the body was complete
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                await send_json(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: http.disconnect, for streaming responses

        await self.app(scope, replay, send)
