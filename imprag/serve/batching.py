"""The request queue: one worker thread owns the model and runs queued requests in batches.

Requests (`Job`s) arrive from any thread. The worker takes the oldest job, waits at most `max_wait_ms`
after that job arrived for up to `max_batch_size` compatible jobs, then runs them as one batch: one
retrieval pass (the implicit queries of every prompt, top max(k) passages, each job keeping its own k),
then one batched decode. Compatible means: same sampling rule, because the decoder applies one
temperature/top-p per batch (all greedy requests share batches; sampling requests group by (temperature,
top_p); a request with a `seed` runs alone so that its output depends only on its seed), and the same
reading mode (k = 0 "closed book" requests run without the passage offset). Retrieval-only jobs join any
batch. max_tokens and stop strings are per request: the batch decodes up to the largest max_tokens, each
row is finished (and answered) as soon as its own limit or stop string is reached, and the decode ends
when every row is finished.

Results go back through `Job.emit(event)`, called on the worker thread: `Retrieved`, then (streaming
jobs) `Delta`s, then exactly one `Finished` or `Failed`. No batching across decode steps: a request that
arrives while a batch decodes waits for the next batch. A cancelled job (its client left) stops being answered and
gives its place (`max_active`) back at the next decode step of its batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from imprag.errors import UserError
from imprag.passage import passage_text

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """More requests are queued or running than the server allows."""


class Stopped(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass(frozen=True)
class Sampling:
    """How one request decodes. temperature 0 = greedy."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


# ---------------------------------------------------------------- events sent back to the caller
@dataclass
class Retrieved:
    passages: list[dict[str, Any]]  # records with "score" and "row", best first


@dataclass
class Delta:
    text: str  # new answer text since the previous Delta (never split inside a stop string or a character)


@dataclass
class Result:
    text: str
    finish_reason: str | None  # "stop" | "length"; None for retrieval-only jobs
    prompt_tokens: int
    completion_tokens: int
    passages: list[dict[str, Any]]


@dataclass
class Finished:
    result: Result


@dataclass
class Failed:
    error: BaseException


Event = Retrieved | Delta | Finished | Failed


@dataclass(eq=False)
class Job:
    """One prompt to answer (`sampling` given) or only to retrieve for (`sampling` None)."""

    prompt: str
    k: int
    emit: Callable[[Event], None]
    sampling: Sampling | None = None
    stream: bool = False
    prompt_tokens: int = 0
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set by the caller (client gone): the worker stops spending time on it
    closed: bool = False  # Finished or Failed was sent (or the job was dropped)
    release: Callable[[], None] | None = field(default=None, repr=False)  # set by Engine.submit

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, event: Event) -> None:
        """emit() with the guarantee that nothing follows the one Finished/Failed."""
        if isinstance(event, Finished | Failed):
            if not self.close():
                return
        elif self.closed:
            return
        self.emit(event)

    def close(self) -> bool:
        """Mark done (frees its place in the engine before the caller hears of it); False if already done."""
        if self.closed:
            return False
        self.closed = True
        if self.release is not None:
            self.release()
        return True

    def key(self) -> Hashable | None:
        """Jobs with equal keys can share a decode; None (retrieval only) joins any batch."""
        s = self.sampling
        if s is None:
            return None
        closed_book = self.k == 0
        if s.seed is not None:
            return ("seeded", id(self))
        if s.temperature == 0:
            return ("greedy", closed_book)
        return ("sample", s.temperature, s.top_p, closed_book)


@dataclass
class BatchConfig:
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_active: int = 128  # jobs queued or running; submit() beyond it raises Overloaded
    seed: int | None = None


@dataclass
class EngineStats:
    batches: int = 0
    jobs: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)

    @property
    def mean_batch_size(self) -> float:
        return self.jobs / self.batches if self.batches else 0.0


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of a running answer must not be streamed yet: an unfinished
    character (U+FFFD from a partial UTF-8 sequence) or the start of a stop string that may complete."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    if text.endswith("\ufffd"):
        keep = max(keep, len(text) - len(text.rstrip("\ufffd")))
    return keep


class _Row:
    """One job's view of its batch row: applies the job's own max_tokens and stop strings."""

    def __init__(self, job: Job, passages: list[dict[str, Any]]):
        self.job = job
        self.passages = passages
        self.sent = ""  # text already streamed
        self.done = False

    def update(self, gen) -> None:
        """gen: the row's Generation after one more decode step (text, token_ids, finish_reason)."""
        if self.done:
            return
        if self.job.cancelled:  # the client left: give its place back now, not when the batch ends
            self.done = True
            self.job.close()
            return
        s = self.job.sampling
        assert s is not None
        text, finish = gen.text, None
        cuts = [text.find(x) for x in s.stop if x in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        elif gen.finish_reason == "stop":  # EOS
            finish = "stop"
        elif len(gen.token_ids) >= s.max_tokens or gen.finish_reason == "length":
            finish = "length"
        if self.job.stream:
            visible = text if finish else text[: len(text) - held_back(text, s.stop)]
            if len(visible) > len(self.sent) and visible.startswith(self.sent):
                self.job.send(Delta(visible[len(self.sent) :]))
                self.sent = visible
        if finish:
            self.done = True
            result = Result(text, finish, gen.prompt_tokens, len(gen.token_ids), self.passages)
            self.job.send(Finished(result))


class Engine:
    """Owns the model and index; `submit` jobs from any thread, `start`/`stop` the worker."""

    def __init__(self, model: Any, index: Any, config: BatchConfig | None = None):
        self.model = model
        self.index = index
        self.config = config or BatchConfig()
        self.stats = EngineStats()
        self._pending: collections.deque[Job] = collections.deque()
        self._active = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._generator = torch.Generator(device="cpu")
        if self.config.seed is not None:
            self._generator.manual_seed(self.config.seed)
        else:
            self._generator.seed()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="imprag-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish every queued and running one, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def active(self) -> int:
        return self._active

    # ------------------------------------------------------------------ submitting
    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs atomically (all or none). Raises Overloaded or Stopped."""
        with self._cond:
            if self._stopping or not self.alive:
                raise Stopped("the server is shutting down")
            if self._active + len(jobs) > self.config.max_active:
                raise Overloaded(
                    f"{self._active} requests are in progress and the server takes at most "
                    f"{self.config.max_active} at once; retry shortly"
                )
            for j in jobs:
                j.release = self._release
            self._active += len(jobs)
            self._pending.extend(jobs)
            self._cond.notify_all()

    def _release(self) -> None:
        with self._cond:
            self._active -= 1

    # ------------------------------------------------------------------ the worker
    def _batch_key(self) -> Hashable | None:
        return next((k for j in self._pending if (k := j.key()) is not None), None)

    def _compatible(self, key: Hashable | None) -> list[Job]:
        return [j for j in self._pending if j.key() is None or j.key() == key]

    def _next_batch(self) -> list[Job] | None:
        """Block until a batch is ready (full, or the oldest job waited max_wait_ms); None: stop."""
        wait = self.config.max_wait_ms / 1000
        with self._cond:
            while True:
                for j in [j for j in self._pending if j.cancelled]:
                    self._pending.remove(j)
                    self._active -= 1
                    j.closed = True
                if not self._pending:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                key = self._batch_key()
                ready = self._compatible(key)
                remaining = self._pending[0].created + wait - time.monotonic()
                if len(ready) >= self.config.max_batch_size or remaining <= 0 or self._stopping:
                    batch = ready[: self.config.max_batch_size]
                    for j in batch:
                        self._pending.remove(j)
                    return batch
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.stats.batches += 1
            self.stats.jobs += len(batch)
            self.stats.batch_sizes[len(batch)] += 1
            try:
                self._run(batch)
            except Exception as e:  # the worker must survive anything one batch does
                if not isinstance(e, UserError):
                    log.exception("a batch of %d requests failed", len(batch))
                for j in batch:
                    j.send(Failed(e))
            finally:
                for j in batch:  # cancelled rows never sent anything: free their places
                    j.close()

    @torch.no_grad()
    def _run(self, batch: list[Job]) -> None:
        """Retrieve for every job, answer retrieval-only jobs, then decode the rest together."""
        k_max = max(j.k for j in batch)
        prompts = [j.prompt for j in batch]
        hits = self.index.retrieve(self.model, prompts, k_max) if k_max > 0 else [[] for _ in batch]
        rows: list[_Row] = []
        for job, found in zip(batch, hits):
            passages = found[: job.k]
            if job.sampling is None:
                job.send(Finished(Result("", None, job.prompt_tokens, 0, passages)))
                continue
            if job.stream:
                job.send(Retrieved(passages))
            rows.append(_Row(job, passages))
        rows = [r for r in rows if not r.job.cancelled]
        if not rows:
            return
        s = rows[0].job.sampling
        assert s is not None
        closed_book = rows[0].job.k == 0
        generator = self._generator
        if s.seed is not None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(s.seed)
        steps = self.model.generate_stream(
            [r.job.prompt for r in rows],
            None if closed_book else [[passage_text(p) for p in r.passages] for r in rows],
            max_new_tokens=max(r.job.sampling.max_tokens for r in rows),  # type: ignore[union-attr]
            do_sample=s.temperature > 0,
            temperature=s.temperature if s.temperature > 0 else 1.0,
            top_p=s.top_p,
            stop=None,  # each row applies its own stop strings
            generator=generator,
        )
        try:
            for states in steps:
                for row, gen in zip(rows, states):
                    row.update(gen)
                if all(r.done for r in rows):
                    break
        finally:
            steps.close()
        for row in rows:  # the decoder ended (should not happen before every row finished)
            if not row.done and not row.job.cancelled:
                row.job.send(Failed(RuntimeError("decoding ended before the answer was finished")))
