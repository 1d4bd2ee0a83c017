"""The engine-facing interface of the server: requests in, token events out, cancel.

`Scheduler` is the narrow contract the HTTP layer uses; `MicroBatchScheduler` implements it
with static micro-batching: one worker thread per model waits a few milliseconds (or until
the batch is full) for requests whose options fit together, decodes them with the engine's
public `model.stream()`, and hands each token to its request's asyncio queue. A
continuous-batching scheduler replaces it behind the same interface.

Cancellation: a cancelled request stops receiving events at once; its row keeps being
computed until its batch ends, except that a batch whose every request is cancelled or done
stops at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError, SeqportError
from seqport.serving.batching import run_batch
from seqport.serving.jobs import GenerationRequest, Job, Outbox, TokenEvent

logger = logging.getLogger(__name__)


class QueueFull(SeqportError, RuntimeError):
    """The waiting queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(SeqportError, RuntimeError):
    """The server is shutting down and admits no new requests."""


class Scheduler(Protocol):
    """What the HTTP layer needs from an engine scheduler."""

    async def submit(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Queue a request; returns its events, ending after each choice's finish_reason.

        Raises:
            QueueFull: the waiting queue is full (→ 429).
            ShuttingDown: the server is stopping (→ 503).
        """
        ...

    def cancel(self, request_id: str) -> None:
        """Stop a request: no more events; its rows are freed as the scheduler documents."""
        ...

    def close(self, grace_s: float) -> None:
        """Stop admitting, let running requests finish for up to `grace_s`, cancel the rest."""
        ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running_rows(self) -> int: ...


@dataclass(frozen=True)
class SchedulerLimits:
    """Admission limits.

    Args:
        max_batch_rows: most decoder rows decoded together.
        max_queue: most requests waiting (not yet running); more → QueueFull.
        batch_wait_s: how long the first waiting request waits for others to share its batch.
        kv_budget_bytes: worst-case KV cache bytes of one batch (0: no limit).
    """

    max_batch_rows: int = 8
    max_queue: int = 64
    batch_wait_s: float = 0.005
    kv_budget_bytes: int = 0


class MicroBatchScheduler:
    """Static micro-batching over `model.stream()` in one worker thread (see the module doc).

    Args:
        model: a loaded generating model (seqport.engine.load()).
        limits: admission limits.
        on_batch: called with the row count of every batch started (metrics).
        outbox: where the worker's events go (default: an Outbox to the submitters' event loops;
            serving/process.py gives a pipe to the HTTP process).
        cond: the condition the worker waits on and the queue's lock (default: a new one; a
            subclass gives one whose lock its other threads share).
    """

    def __init__(
        self,
        model: Any,
        limits: SchedulerLimits,
        on_batch: Any = None,
        outbox: Any = None,
        cond: threading.Condition | None = None,
    ) -> None:
        self.model, self.limits, self._on_batch = model, limits, on_batch
        self._cond = cond or threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: list[Job] = []
        self._closing = False
        self._outbox = outbox or Outbox()  # the worker's events, handed over once per step
        self._thread = threading.Thread(target=self._work, name="seqport-scheduler", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running_rows(self) -> int:
        return sum(job.request.rows for job in self._held() if job.live)

    def _held(self) -> list[Job]:
        """The jobs started and not yet finished (a continuous scheduler adds those it is starting)."""
        return list(self._running)

    async def submit(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        job = Job(request, asyncio.get_running_loop(), asyncio.Queue(), self.kv_bytes(request), outbox=self._outbox)
        self.enqueue(job)
        return self._events(job)

    def enqueue(self, job: Job) -> None:
        """Queue `job` (what `submit` does once it has made the job).

        Raises:
            ConfigError: the request needs more rows or KV cache than the limits allow.
            QueueFull, ShuttingDown: as `submit`.
        """
        request = job.request
        self._check_size(job)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down; retry on another instance")
            if len(self._waiting) >= self.limits.max_queue:
                raise QueueFull(f"the waiting queue is full ({self.limits.max_queue} requests); retry shortly")
            self._waiting.append(job)
            self._jobs[request.request_id] = job
            job.stamp("submitted")
            self._wake_for(job)

    def _wake_for(self, job: Job) -> None:
        """(Under the lock.) Wake the thread that starts a newly queued job."""
        self._cond.notify()

    def _wake_all(self) -> None:
        """(Under the lock.) Wake every thread of the scheduler (it is closing)."""
        self._cond.notify_all()

    def _check_size(self, job: Job) -> None:
        rows, limits = job.request.rows, self.limits
        if rows > limits.max_batch_rows:
            raise ConfigError(
                f"this request needs {rows} decoder rows (n, best_of, num_beams), more than the server's "
                f"limit of {limits.max_batch_rows} (--max-batch-rows); ask for fewer"
            )
        if limits.kv_budget_bytes and job.kv_bytes > limits.kv_budget_bytes:
            raise ConfigError(
                f"this request needs up to {job.kv_bytes / 2**20:.1f} MiB of KV cache, more than the server's "
                f"budget of {limits.kv_budget_bytes / 2**20:.1f} MiB (--kv-budget-mb); lower max_tokens or n"
            )

    def cancel(self, request_id: str) -> None:
        with self._cond:
            job = self._jobs.pop(request_id, None)
            if job is None:
                return
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)

    def close(self, grace_s: float = 5.0) -> None:
        with self._cond:
            self._closing = True
            for job in self._waiting:
                job.cancelled = True
                job.fail(ShuttingDown("the server shut down before this request started"))
            self._waiting.clear()
            self._wake_all()
        self._thread.join(grace_s)
        if self._thread.is_alive():
            for job in self._held():
                job.cancelled = True
                job.fail(ShuttingDown("the server shut down while this request ran"))
            self._thread.join(grace_s)
        if not self._thread.is_alive():
            self._outbox.close(grace_s)  # the worker's last events go out, then its courier stops

    def kv_bytes(self, request: GenerationRequest) -> int:
        """Worst-case KV cache bytes of a request: self-attention K/V for prompt (decoder-only)
        plus generated tokens, and the encoder's cross K/V, for each of its rows."""
        kv = self.model.manifest.kv
        per_token = 2 * kv.num_layers * kv.num_kv_heads * kv.head_dim * _itemsize(kv.dtype)
        prompt = len(request.prompt_ids)
        tokens = request.config.max_new_tokens + len(request.config.prefix_ids) + 1 + prompt
        return per_token * tokens * request.rows

    async def _events(self, job: Job) -> AsyncIterator[TokenEvent]:
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                yield item
        finally:
            self.cancel(job.request.request_id)  # a consumer that stops early frees the job

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._running = batch
            if self._on_batch is not None:
                self._on_batch(sum(job.request.rows for job in batch))
            try:
                run_batch(self.model, batch)
            except Exception as exc:  # a worker must outlive one failed batch
                logger.exception("batch of %d requests failed", len(batch))
                for job in batch:
                    job.fail(exc)
            finally:
                self._outbox.flush()
                with self._cond:
                    for job in batch:
                        self._jobs.pop(job.request.request_id, None)
                self._running = []

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._waiting.popleft()
            batch = [first]
            if first.request.runs_alone:
                first.stamp("admitted")
                return batch
            deadline = time.monotonic() + self.limits.batch_wait_s
            while True:
                self._take_compatible(batch)
                left = deadline - time.monotonic()
                if left <= 0 or self._rows(batch) >= self.limits.max_batch_rows or self._closing:
                    for job in batch:
                        job.stamp("admitted")
                    return batch
                self._cond.wait(left)

    def _take_compatible(self, batch: list[Job]) -> None:
        for job in list(self._waiting):
            if self._fits(batch, job):
                self._waiting.remove(job)
                batch.append(job)

    def _fits(self, batch: list[Job], job: Job) -> bool:
        if job.request.runs_alone or _group_key(job.request) != _group_key(batch[0].request):
            return False
        if self._rows(batch) + job.request.rows > self.limits.max_batch_rows:
            return False
        budget = self.limits.kv_budget_bytes
        if budget and sum(j.kv_bytes for j in batch) + job.kv_bytes > budget:
            return False
        return _lengths_fit(self.model, [*batch, job])

    @staticmethod
    def _rows(batch: list[Job]) -> int:
        return sum(job.request.rows for job in batch)


def _group_key(request: GenerationRequest) -> GenerationConfig:
    """Requests decode together when their options agree except max_new_tokens (each row is cut
    at its own limit)."""
    return request.config.replace(max_new_tokens=1 << 30)


def _lengths_fit(model: Any, batch: list[Job]) -> bool:
    """A decoder-only batch caps max_new_tokens by its longest prompt: every row must still get
    the tokens it gets alone — its own limit fits beside the longest prompt, or its prompt is
    the longest (then alone it is capped the same way)."""
    if model.manifest.architecture != "decoder-only":
        return True
    longest = max(len(job.request.prompt_ids) for job in batch)
    room = model.manifest.max_positions - longest
    return all(
        job.request.config.max_new_tokens + len(job.request.config.prefix_ids) <= room
        or len(job.request.prompt_ids) == longest
        for job in batch
    )


def _itemsize(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4, "int8": 1}.get(dtype, 4)
