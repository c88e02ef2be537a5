"""The request queue without HTTP: what shares a batch, and that a batch answers each request exactly as
the library answers it alone (per-request max_tokens, stop strings and k inside one decode)."""

from __future__ import annotations

import queue

import pytest

from imprag import rag
from imprag.index.faiss_index import Index
from imprag.model.imprag import ImpRAG
from imprag.serve.batching import (
    BatchConfig,
    Delta,
    Engine,
    Failed,
    Finished,
    Job,
    Overloaded,
    Retrieved,
    Sampling,
    Stopped,
    held_back,
)

PROMPTS = [
    "Q: which river flows through the capital? A:",
    "Q: who wrote the book? A:",
    "Q: where is the king? A:",
    "Q: what flows north? A:",
]


@pytest.fixture(scope="module")
def mi(tiny_model_dir, tiny_index):
    out = tiny_index
    model = ImpRAG.from_pretrained(tiny_model_dir)
    return model, Index.load(out, model=model)


class Collector:
    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def emit(self, event) -> None:
        self.q.put(event)

    def events(self, timeout: float = 60.0) -> list:
        out = []
        while True:
            e = self.q.get(timeout=timeout)
            out.append(e)
            if isinstance(e, Finished | Failed):
                return out


def make_job(prompt: str, k: int, sampling: Sampling | None, stream: bool = False) -> tuple[Job, Collector]:
    c = Collector()
    return Job(prompt=prompt, k=k, emit=c.emit, sampling=sampling, stream=stream, prompt_tokens=1), c


def run_all(engine: Engine, jobs: list[tuple[Job, Collector]]) -> list[list]:
    engine.submit(
        [j for j, _ in jobs]
    )  # one atomic submit: every compatible job is queued before the worker looks
    return [c.events() for _, c in jobs]


def test_one_batch_answers_each_request_as_alone(mi):
    model, index = mi
    engine = Engine(model, index, BatchConfig(max_batch_size=8, max_wait_ms=50))
    engine.start()
    try:
        full = rag.answer(model, index, [PROMPTS[0]], k=3, max_new_tokens=10)[0].generation.text
        stop = full[4:6]
        specs = [  # (prompt, k, max_tokens, stop, stream)
            (PROMPTS[0], 3, 10, (), False),
            (PROMPTS[0], 3, 3, (), True),  # same prompt, shorter limit: a prefix of the first
            (PROMPTS[0], 3, 10, (stop,), True),  # stop string inside the batch
            (PROMPTS[1], 1, 7, (), False),  # its own k inside a batch that retrieves 3
            (PROMPTS[2], 2, 5, (), True),
        ]
        jobs = [make_job(p, k, Sampling(n, stop=s), stream) for p, k, n, s, stream in specs]
        jobs.append(make_job(PROMPTS[3], 2, None))  # retrieval only: rides along
        events = run_all(engine, jobs)
        assert engine.stats.batch_sizes == {len(jobs): 1}
        for (prompt, k, n, s, stream), evs in zip(specs, events):
            want = rag.answer(model, index, [prompt], k=k, max_new_tokens=n, stop=list(s))[0]
            result = evs[-1].result
            assert result.text == want.generation.text
            assert result.finish_reason == want.generation.finish_reason
            assert result.completion_tokens == len(want.generation.token_ids)
            assert [p["id"] for p in result.passages] == [p["id"] for p in want.passages]
            if stream:
                assert isinstance(evs[0], Retrieved) and [p["id"] for p in evs[0].passages] == [
                    p["id"] for p in want.passages
                ]
                assert "".join(e.text for e in evs if isinstance(e, Delta)) == result.text
            else:
                assert [type(e) for e in evs] == [Finished]
        assert events[2][-1].result.text == full[: full.find(stop)]
        retrieved = events[-1][-1].result
        assert retrieved.finish_reason is None
        assert [p["id"] for p in retrieved.passages] == [
            p["id"] for p in index.retrieve(model, [PROMPTS[3]], k=2)[0]
        ]
    finally:
        engine.stop()


def test_incompatible_sampling_runs_in_separate_batches(mi):
    model, index = mi
    engine = Engine(model, index, BatchConfig(max_batch_size=8, max_wait_ms=0, seed=0))
    engine.start()
    try:
        jobs = [
            make_job(PROMPTS[0], 2, Sampling(4)),
            make_job(PROMPTS[1], 2, Sampling(4, temperature=0.7, top_p=0.9)),
            make_job(PROMPTS[2], 2, Sampling(4)),
            make_job(PROMPTS[3], 2, Sampling(4, temperature=0.7, top_p=0.9)),
            make_job(PROMPTS[0], 0, Sampling(4)),  # closed book: no passage offset, its own batch
            make_job(PROMPTS[1], 2, Sampling(4, temperature=0.7, seed=3)),  # seeded: alone
        ]
        events = run_all(engine, jobs)
        assert all(isinstance(e[-1], Finished) for e in events)
        assert engine.stats.batches == 4 and engine.stats.batch_sizes == {2: 2, 1: 2}
        assert events[4][-1].result.text == model.generate([PROMPTS[0]], None, max_new_tokens=4)[0].text
    finally:
        engine.stop()


def test_batches_never_exceed_the_batch_size(mi):
    model, index = mi
    engine = Engine(model, index, BatchConfig(max_batch_size=3, max_wait_ms=1000))
    engine.start()
    try:
        jobs = [make_job(PROMPTS[i % 4], 1, Sampling(2)) for i in range(7)]
        events = run_all(engine, jobs)  # 3 + 3 full at once; the 7th waits out max_wait_ms
        assert all(isinstance(e[-1], Finished) for e in events)
        assert engine.stats.batch_sizes == {3: 2, 1: 1}
    finally:
        engine.stop()


def test_overload_stop_and_failures(mi):
    model, index = mi
    engine = Engine(model, index, BatchConfig(max_batch_size=4, max_wait_ms=0, max_active=2))
    with pytest.raises(Stopped):  # not started
        engine.submit([make_job(PROMPTS[0], 1, Sampling(2))[0]])
    engine.start()
    try:
        with pytest.raises(Overloaded):
            engine.submit([make_job(p, 1, Sampling(2))[0] for p in PROMPTS[:3]])
        assert engine.active == 0  # all or nothing
        bad = make_job(PROMPTS[0], 11, Sampling(2))  # more passages than the model reads -> UserError
        (evs,) = run_all(engine, [bad])
        assert isinstance(evs[-1], Failed) and "k=" in str(evs[-1].error)
        (ok,) = run_all(engine, [make_job(PROMPTS[0], 1, Sampling(2))])  # the worker survived
        assert isinstance(ok[-1], Finished)
    finally:
        engine.stop()
    assert not engine.alive
    with pytest.raises(Stopped):
        engine.submit([make_job(PROMPTS[0], 1, Sampling(2))[0]])


def test_stop_finishes_queued_requests(mi):
    model, index = mi
    engine = Engine(model, index, BatchConfig(max_batch_size=2, max_wait_ms=10_000))
    engine.start()
    jobs = [make_job(PROMPTS[i], 1, Sampling(3)) for i in range(3)]
    engine.submit([j for j, _ in jobs])
    engine.stop(timeout=60)  # does not wait out max_wait_ms, and answers every queued job
    assert not engine.alive
    assert all(isinstance(c.events(timeout=1)[-1], Finished) for _, c in jobs)


def test_cancelled_jobs_are_dropped(mi):
    model, index = mi
    engine = Engine(model, index, BatchConfig(max_batch_size=4, max_wait_ms=10_000))
    engine.start()
    try:
        (gone, gone_c), (kept, kept_c) = (
            make_job(PROMPTS[0], 1, Sampling(2)),
            make_job(PROMPTS[1], 1, Sampling(2)),
        )
        gone.cancel()
        engine.submit([gone, kept])
        engine.stop(timeout=60)
        assert isinstance(kept_c.events(timeout=1)[-1], Finished)
        assert gone_c.q.empty() and engine.stats.jobs == 1 and engine.active == 0
    finally:
        engine.stop()


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("abc", (), 0),
        ("abc", ("cd",), 1),
        ("abc", ("bcx", "c"), 2),
        ("ab\ufffd", (), 1),
        ("abc", ("abcd",), 3),
        ("abc", ("x",), 0),
    ],
)
def test_held_back_tail(text, stops, held):
    assert held_back(text, stops) == held


def test_a_cancelled_row_frees_its_place_while_the_batch_still_decodes(mi):
    """A client that leaves mid-stream gives its place back at the next decode step, not when the other
    rows of its batch finish."""
    model, index = mi
    engine = Engine(model, index, BatchConfig(max_batch_size=2, max_wait_ms=10_000, max_active=2))
    seen_active: list[int] = []
    (left, left_c), (kept, kept_c) = (
        make_job(PROMPTS[0], 1, Sampling(32), stream=True),
        make_job(PROMPTS[1], 1, Sampling(32), stream=True),
    )

    def leave_after_first_delta(event) -> None:  # runs on the worker thread, as the HTTP route's cancel
        left_c.emit(event)
        if isinstance(event, Delta):
            left.cancel()

    def watch(event) -> None:
        kept_c.emit(event)
        if isinstance(event, Delta):
            seen_active.append(engine.active)

    left.emit, kept.emit = leave_after_first_delta, watch
    engine.start()
    try:
        engine.submit([left, kept])
        events = kept_c.events()
        assert isinstance(events[-1], Finished) and events[-1].result.completion_tokens > 3
        assert left.cancelled and 1 in seen_active  # freed while `kept` was still decoding (else 2)
        assert engine.stats.batches == 1 and engine.active == 0
        engine.submit([make_job(PROMPTS[2], 1, Sampling(2))[0]])  # the place is usable again
    finally:
        engine.stop()
