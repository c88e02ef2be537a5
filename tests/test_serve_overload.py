"""The real server under overload, on 127.0.0.1 with real clients (httpx and the official `openai`
client): more concurrent requests than it holds get a prompt OpenAI-style 429 (none hangs), the accepted
ones finish, and a client that leaves a stream mid-way frees its place for the next request."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from imprag.index.faiss_index import Index
from imprag.model.imprag import ImpRAG
from imprag.serve.app import create_app
from imprag.serve.config import ServeConfig
from imprag.serve.server import ServerThread

NAME = "tiny"
SLOTS = 2  # --max-concurrent
REQUESTS = 16  # sent at once: 8x what the server holds
PROMPT = "Q: which river flows north through the valley? A:"


@pytest.fixture(scope="module")
def model_index(tiny_model_dir, tiny_index):
    model = ImpRAG.from_pretrained(tiny_model_dir)
    return model, Index.load(tiny_index, model=model)


def serve(model_index, **cfg) -> ServerThread:
    model, index = model_index
    config = ServeConfig(model_name=NAME, k=3, max_batch_size=2, max_wait_ms=5, max_tokens_cap=64, **cfg)
    return ServerThread(create_app(model, index, config))


def body(stream: bool = False, max_tokens: int = 64) -> dict:
    return {"model": NAME, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


async def one(client: httpx.AsyncClient, url: str, stream: bool) -> tuple[int, float, dict | None]:
    """(status, seconds to the status line, error body for non-200)."""
    t = time.perf_counter()
    async with client.stream("POST", url + "/v1/completions", json=body(stream)) as r:
        took = time.perf_counter() - t
        raw = await r.aread()  # the whole answer (or stream) for 200s
    if r.status_code == 200:
        if stream:
            assert raw.decode().rstrip().endswith("data: [DONE]")
        return 200, took, None
    assert r.headers["content-type"].startswith("application/json")
    return (
        r.status_code,
        took,
        {"json": httpx.Response(r.status_code, content=raw).json(), "headers": r.headers},
    )


def test_more_requests_than_slots_get_a_prompt_429_and_none_hangs(model_index):
    with serve(model_index, max_concurrent=SLOTS) as server:

        async def burst():
            limits = httpx.Limits(max_connections=REQUESTS)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                tasks = [one(client, server.url, stream=i % 2 == 1) for i in range(REQUESTS)]
                return await asyncio.wait_for(asyncio.gather(*tasks), 120)  # bounded: nothing may hang

        results = asyncio.run(burst())
        codes = [c for c, _, _ in results]
        assert set(codes) <= {200, 429}, codes
        assert codes.count(200) >= SLOTS and codes.count(429) >= 1, codes
        for code, took, err in results:
            if code == 429:
                e = err["json"]["error"]  # type: ignore[index]
                assert set(e) == {"message", "type", "param", "code"}
                assert e["type"] == "rate_limit_error" and e["code"] == "too_many_concurrent_requests"
                assert err["headers"]["retry-after"] == "1"  # type: ignore[index]
                assert took < 5.0  # refused at once, not after the running batch
        # afterwards every place is free again and the server answers normally
        engine = server.app.state.service.engine
        assert engine.active == 0
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        assert client.completions.create(model=NAME, prompt=PROMPT, max_tokens=4).choices[0].finish_reason


def test_the_openai_client_sees_rate_limit_errors(model_index):
    with serve(model_index, max_concurrent=1) as server:

        async def burst():
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
            calls = [
                client.completions.create(model=NAME, prompt=PROMPT, max_tokens=64, temperature=0)
                for _ in range(8)
            ]
            out = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 120)
            await client.close()
            return out

        out = asyncio.run(burst())
        errors = [r for r in out if isinstance(r, BaseException)]
        assert errors and all(isinstance(e, openai.RateLimitError) for e in errors), errors
        assert any(not isinstance(r, BaseException) for r in out)


def test_a_client_leaving_mid_stream_frees_its_slot_for_the_next(model_index):
    with serve(model_index, max_concurrent=1) as server:
        url = server.url + "/v1/completions"
        with httpx.stream("POST", url, json=body(stream=True), timeout=60) as r:
            assert r.status_code == 200
            first = next(r.iter_lines())
            assert first.startswith("data: ")
        # the only place was that stream's; the next request gets it (bounded wait, no 429 forever)
        deadline = time.monotonic() + 20
        while True:
            ok = httpx.post(url, json=body(max_tokens=2), timeout=60)
            if ok.status_code == 200 or time.monotonic() > deadline:
                break
            assert ok.status_code == 429
            time.sleep(0.05)
        assert ok.status_code == 200, ok.text
        assert server.app.state.service.engine.active == 0
