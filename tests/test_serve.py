"""The real server (uvicorn in a thread on a loopback port) with a tiny model and a real index, driven by
the official `openai` client: answers equal the library's own rag.answer, streams equal whole answers,
and every bad request is a 4xx in the OpenAI error shape."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from conftest import build_index

from imprag import rag
from imprag.index.faiss_index import Index
from imprag.model.imprag import ImpRAG
from imprag.serve.app import create_app
from imprag.serve.config import ServeConfig
from imprag.serve.server import ServerThread

KEY = "test-key-123"
NAME = "tiny-imprag"
K = 3
PROMPT = "Q: which river flows through the capital? A:"


def write_corpus(path: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(0)
    words = (
        "the capital of France is Paris river flows north through valley author wrote book king queen".split()
    )
    recs = [
        {
            "id": f"d{i}",
            "title": f"Doc {i}",
            "text": " ".join(rng.choice(words, size=int(rng.integers(5, 30)))),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("serve")
    passages = write_corpus(tmp / "passages.jsonl")
    out = tmp / "index"
    build_index(tiny_model_dir, passages, out)
    model = ImpRAG.from_pretrained(tiny_model_dir)
    index = Index.load(out, model=model)
    config = ServeConfig(
        model_name=NAME,
        api_key=KEY,
        k=K,
        max_prompt_tokens=64,
        max_tokens_cap=32,
        max_body_bytes=64 * 1024,
        max_wait_ms=5,
    )
    app = create_app(model, index, config)
    with ServerThread(app) as server:
        yield server, model, index, app


@pytest.fixture(scope="module")
def client(setup) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup[0].url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(setup, path: str, body: bytes | dict, key: str | None = KEY) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(setup[0].url + path, content=content, headers=headers, timeout=60)


def assert_openai_error(
    r: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def expected(model, index, prompt: str, max_tokens: int, k: int = K, stop=None):
    return rag.answer(model, index, [prompt], k=k, max_new_tokens=max_tokens, stop=stop)[0]


# ---------------------------------------------------------------- answers
def test_completion_equals_library_answer_and_lists_retrieval(setup, client):
    _, model, index, _ = setup
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    want = expected(model, index, PROMPT, 8)
    assert r.object == "text_completion" and r.model == NAME and len(r.choices) == 1
    assert r.choices[0].text == want.generation.text
    assert r.choices[0].finish_reason == want.generation.finish_reason
    assert r.usage.prompt_tokens == want.generation.prompt_tokens
    assert r.usage.completion_tokens == len(want.generation.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    hits = index.retrieve(model, [PROMPT], k=K)[0]
    got = r.model_extra["retrieval"]
    assert [(e["index"], e["rank"], e["id"], e["title"]) for e in got] == [
        (0, i + 1, h["id"], h["title"]) for i, h in enumerate(hits)
    ]
    np.testing.assert_allclose([e["score"] for e in got], [h["score"] for h in hits], rtol=1e-5, atol=1e-6)


def test_list_prompt_gives_one_choice_each_and_k_zero_is_closed_book(setup, client):
    _, model, index, _ = setup
    prompts = [PROMPT, "Q: who wrote the book? A:"]
    r = client.completions.create(model=NAME, prompt=prompts, max_tokens=5, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    for c, p in zip(r.choices, prompts):
        assert c.text == expected(model, index, p, 5).generation.text
    assert sorted({e["index"] for e in r.model_extra["retrieval"]}) == [0, 1]
    closed = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=5, temperature=0, extra_body={"k": 0}
    )
    assert closed.choices[0].text == model.generate([PROMPT], None, max_new_tokens=5)[0].text
    assert closed.model_extra["retrieval"] == []


def test_chat_completion_uses_role_lines_and_equals_library_answer(setup, client):
    _, model, index, app = setup
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "which river flows north?"},
    ]
    prompt = app.state.service.formatter(messages)
    assert (
        prompt == "system: Be brief.\nuser: which river flows north?\nassistant:"
    )  # tiny tokenizer: no template
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    want = expected(model, index, prompt, 6)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want.generation.text
    assert r.choices[0].finish_reason == want.generation.finish_reason
    assert r.usage.prompt_tokens == want.generation.prompt_tokens
    assert [e["id"] for e in r.model_extra["retrieval"]] == [p["id"] for p in want.passages]


def test_streamed_completion_equals_whole_answer(setup, client):
    _, model, index, _ = setup
    chunks = list(
        client.completions.create(
            model=NAME,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    want = expected(model, index, PROMPT, 12)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want.generation.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [want.generation.finish_reason]
    assert [e["id"] for e in chunks[0].model_extra["retrieval"]] == [p["id"] for p in want.passages]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.generation.token_ids)
    assert len({c.id for c in chunks}) == 1


def test_streamed_chat_and_raw_event_stream(setup, client):
    _, model, index, app = setup
    messages = [{"role": "user", "content": "who wrote the book?"}]
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=messages, max_tokens=6, temperature=0, stream=True
        )
    )
    want = expected(model, index, app.state.service.formatter(messages), 6)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.generation.text
    assert chunks[-1].choices[0].finish_reason == want.generation.finish_reason
    with httpx.stream(
        "POST",
        setup[0].url + "/v1/completions",
        json={"model": NAME, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "stream": True},
        headers={"authorization": f"Bearer {KEY}"},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_stop_strings_and_per_request_max_tokens(setup, client):
    _, model, index, _ = setup
    full = expected(model, index, PROMPT, 12).generation.text
    stop = full[3:5]
    assert stop and stop in full
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=12, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_seeded_sampling_is_reproducible(setup, client):
    a, b = (
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=10, temperature=1.0, seed=7)
        .choices[0]
        .text
        for _ in range(2)
    )
    assert a == b


def test_concurrent_requests_all_answer_correctly(setup, client):
    _, model, index, app = setup
    prompts = [f"Q: what is number {i} about the river? A:" for i in range(8)]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = (
            client.completions.create(model=NAME, prompt=prompts[i], max_tokens=6, temperature=0)
            .choices[0]
            .text
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(len(prompts)))
    for i, p in enumerate(prompts):
        assert results[i] == expected(model, index, p, 6).generation.text
    assert app.state.service.engine.active == 0


# ---------------------------------------------------------------- other routes
def test_retrieve_models_and_health(setup, client):
    _, model, index, _ = setup
    prompts = [PROMPT, "Q: who is the queen? A:"]
    r = post(setup, "/v1/retrieve", {"input": prompts, "k": 2})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    hits = index.retrieve(model, prompts, k=2)
    for i, h in enumerate(hits):
        assert [p["id"] for p in data[i]["passages"]] == [x["id"] for x in h]
        assert [p["text"] for p in data[i]["passages"]] == [x["text"] for x in h]
    assert [m.id for m in client.models.list().data] == [NAME]
    health = httpx.get(setup[0].url + "/health", timeout=10)  # open without the key
    assert health.status_code == 200 and health.json()["status"] == "ok"


# ---------------------------------------------------------------- errors
def test_api_key_is_required(setup):
    for key in (None, "wrong-key"):
        no_key = openai.OpenAI(base_url=setup[0].url + "/v1", api_key=key or "x", max_retries=0)
        if key is None:
            r = post(setup, "/v1/completions", {"model": NAME, "prompt": "x"}, key=None)
            assert_openai_error(r, 401, code="invalid_api_key")
            continue
        with pytest.raises(openai.AuthenticationError) as e:
            no_key.completions.create(model=NAME, prompt=PROMPT, max_tokens=2)
        assert e.value.status_code == 401
    assert_openai_error(httpx.get(setup[0].url + "/v1/models", timeout=10), 401)


def test_oversized_prompt_and_body_are_4xx(setup, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="the river " * 200, max_tokens=2)
    assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "king " * 200}], max_tokens=2
        )
    r = post(setup, "/v1/completions", {"model": NAME, "prompt": "x" * (100 * 1024)})
    assert_openai_error(r, 413, code="request_too_large")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_type"),
        (b'{"model": "tiny-imprag", "prompt": "x", "max_tokens": "5"}', "max_tokens", "invalid_type"),
        (b'{"model": "tiny-imprag", "prompt": 5}', "prompt", "invalid_type"),
        (b'{"model": "tiny-imprag", "prompt": "x", "temperature": "hot"}', "temperature", "invalid_type"),
        (b'{"model": "tiny-imprag", "prompt": "x", "stream": "yes"}', "stream", "invalid_type"),
        (b'{"model": "tiny-imprag", "prompt": "x", "frobnicate": [1]}', "frobnicate", "unknown_parameter"),
        (b'{"prompt": "x"}', "model", "missing_required_parameter"),
        (b'{"model": "tiny-imprag", "prompt": "x", "max_tokens": 0}', "max_tokens", "invalid_value"),
        (b'{"model": "tiny-imprag", "prompt": "x", "max_tokens": -4}', "max_tokens", "invalid_value"),
        (b'{"model": "tiny-imprag", "prompt": "x", "max_tokens": 33}', "max_tokens", "invalid_value"),
        (b'{"model": "tiny-imprag", "prompt": "x", "temperature": 3}', "temperature", "invalid_value"),
        (b'{"model": "tiny-imprag", "prompt": "x", "k": 99}', "k", "invalid_value"),
        (b'{"model": "tiny-imprag", "prompt": "x", "n": 2}', "n", "unsupported_value"),
        (
            b'{"model": "tiny-imprag", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}',
            "stop",
            "invalid_value",
        ),
        (b'{"model": "tiny-imprag", "prompt": []}', "prompt", "invalid_value"),
    ],
)
def test_bad_completion_requests_are_400(setup, body, param, code):
    assert_openai_error(post(setup, "/v1/completions", body), 400, param=param, code=code)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": NAME, "messages": []}, "messages"),
        ({"model": NAME, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": NAME, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
            "max_completion_tokens",
        ),
        ({"model": NAME, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ],
)
def test_bad_chat_requests_are_400(setup, body, param):
    assert_openai_error(post(setup, "/v1/chat/completions", body), 400, param=param)


def test_unknown_model_and_path_are_404_and_client_raises(setup, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert_openai_error(post(setup, "/v1/nothing", {}), 404)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt="x", max_tokens=0)


def test_too_many_concurrent_requests_is_429(tiny_model_dir, setup):
    _, model, index, _ = setup
    app = create_app(model, index, ServeConfig(model_name=NAME, k=K, max_concurrent=2, max_prompts=8))
    with ServerThread(app) as server:
        r = httpx.post(
            server.url + "/v1/completions",
            json={"model": NAME, "prompt": ["a", "b", "c"], "max_tokens": 2},
            timeout=60,
        )
        err = assert_openai_error(r, 429, code="too_many_concurrent_requests")
        assert err["type"] == "rate_limit_error"
        ok = httpx.post(
            server.url + "/v1/completions",
            json={"model": NAME, "prompt": ["a", "b"], "max_tokens": 2},
            timeout=60,
        )
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 2


def test_client_leaving_a_stream_frees_its_slot(setup):
    import time

    _, _, _, app = setup
    with httpx.stream(
        "POST",
        setup[0].url + "/v1/completions",
        json={"model": NAME, "prompt": PROMPT, "max_tokens": 32, "temperature": 0, "stream": True},
        headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as r:
        next(r.iter_lines())
    engine = app.state.service.engine
    for _ in range(500):  # bounded: at most 10 s
        if engine.active == 0:
            break
        time.sleep(0.02)
    assert engine.active == 0
