"""What a scheduler passes around: a request, its token events, and the job that carries both."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from seqport.engine.config import GenerationConfig


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to generate for.

    Args:
        request_id: unique id; `cancel()` takes it.
        prompt_ids: the checked input token ids (special tokens included).
        config: decoding options; `seed` is this prompt's own seed.
        stamps: where the time to its first token goes, filled in as it passes each stage
            (STAGES: perf_counter seconds by stage; the caller may put "arrival" in); None:
            not recorded.
    """

    request_id: str
    prompt_ids: list[int]
    config: GenerationConfig
    stamps: dict[str, float] | None = field(default=None, compare=False, repr=False)

    @property
    def rows(self) -> int:
        """Decoder rows this request occupies (hypotheses kept side by side)."""
        return max(self.config.num_beams, self.config.num_return_sequences)

    @property
    def runs_alone(self) -> bool:
        """Beam search, several sequences, or a seeded sample: decoded as a batch of its own
        (the engine seeds input i of a call with seed + i, so a seeded row must be input 0)."""
        c = self.config
        return c.num_beams > 1 or c.num_return_sequences > 1 or (c.do_sample and c.seed is not None)


# A first token's way, in order (GenerationRequest.stamps): the HTTP call made, queued in the
# scheduler, taken by the worker (or the prefill lane), its source encoded (encoder-decoder,
# continuous batching), its row joined the running batch (continuous batching, when its first
# token comes from the batch's step: an encoder-decoder row whose decoder start joins it), its
# first token chosen, handed to the event loop's queue, its SSE chunk written.
STAGES = ("arrival", "submitted", "admitted", "encoded", "joined", "first_token", "delivered", "written")


def stage_seconds(stamps: dict[str, float]) -> dict[str, float]:
    """Seconds spent reaching each stage from the one recorded before it ({} for no stamps)."""
    seen = [(stage, stamps[stage]) for stage in STAGES if stage in stamps]
    return {stage: max(t - before, 0.0) for (_, before), (stage, t) in zip(seen, seen[1:])}


@dataclass(frozen=True)
class TokenEvent:
    """A piece of one request's output.

    Args:
        choice: which sequence of the request (0 unless n > 1).
        text: new text to show; may be "".
        tokens: generated tokens this event accounts for (0 for an EOS token).
        finish_reason: None until the choice's last event: "stop" or "length" (OpenAI's names).
    """

    choice: int
    text: str
    tokens: int = 1
    finish_reason: str | None = None


@dataclass(eq=False)
class Job:
    """A request inside the scheduler: where its events go and whether anyone still wants them.

    The worker thread calls `emit`/`fail`; they hand items to the request's asyncio queue on its
    event loop (call_soon_threadsafe), or, when the job has an `outbox`, `emit` collects them there
    and the worker flushes the outbox once per decoder step. The queue holds TokenEvents, then
    None at the end, or an exception. A job without a loop (in the engine process,
    serving/process.py) has only its outbox: `fail` posts there and flushes.
    """

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop | None
    queue: asyncio.Queue | None
    kv_bytes: int = 0
    cancelled: bool = False
    done: bool = False
    finished_choices: set = field(default_factory=set)
    outbox: Any = None  # Outbox, or process.PipeOutbox
    stamps_sent: bool = False  # the engine process sent its stamps (with its first item)
    delivered: bool = False  # an item reached its queue (the event loop sets it)

    @property
    def live(self) -> bool:
        return not (self.cancelled or self.done)

    def stamp(self, stage: str) -> None:
        """Record the first time the request reaches `stage` (when its request records stamps)."""
        stamps = self.request.stamps
        if stamps is not None and stage not in stamps:
            stamps[stage] = time.perf_counter()

    def emit(self, event: TokenEvent) -> None:
        if not self.live:
            return
        self.stamp("first_token")
        put = self._put if self.outbox is None else self._post
        put(event)
        if event.finish_reason is not None:
            self.finished_choices.add(event.choice)
            if len(self.finished_choices) >= self.request.config.num_return_sequences:
                self.done = True
                put(None)

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self._put(error)

    def _put(self, item: object) -> None:
        if self.loop is None:  # in the engine process: the pipe is the only way out
            self.outbox.add(self, item)
            self.outbox.flush()
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop closed (server shutdown): nobody is listening
            self.cancelled = True

    def _post(self, item: object) -> None:
        assert self.outbox is not None
        self.outbox.add(self, item)


class Outbox:
    """Events the worker produced during one decoder step, handed to each event loop in one
    call_soon_threadsafe when the step ends, by a small courier thread.

    Waking an event loop writes to its self-pipe, which releases the GIL; the loop thread then
    takes it and runs its callbacks (every stream's SSE chunk) while the worker waits for it back
    — up to the interpreter's switch interval, once per wake-up. So the worker never wakes the
    loop itself: `flush` only hands the step's events to the courier thread, which gets the GIL
    (and wakes the loop) while the worker is inside the runtime call that releases it, so the
    loop's work overlaps the next decoder step. One wake-up per step, not per row and token.

    Pacing: `flush` waits (GIL released) until the event loop has taken the previous step's
    events, so the worker runs at most one step ahead of the loop. On a model whose step costs
    less than writing its SSE chunks, a worker that ran ahead would hold the GIL the loop
    needs to send what was already generated. Only the worker thread calls add and flush.
    """

    PACE_TIMEOUT_S = 1.0  # a loop that stopped taking events (shut down) does not block the worker

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}
        self._ready: deque[dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._unread = 0  # deliveries posted to an event loop that it has not run yet
        self._read = threading.Condition()
        self._courier = threading.Thread(target=self._deliver_all, name="seqport-outbox", daemon=True)
        self._courier.start()

    def add(self, job: Job, item: object) -> None:
        self._items.setdefault(job.loop, []).append((job, item))

    def flush(self) -> None:
        """Hand every collected item to the courier (their order kept)."""
        if not self._items:
            return
        items, self._items = self._items, {}
        with self._read:
            self._read.wait_for(lambda: self._unread == 0, self.PACE_TIMEOUT_S)
            self._unread += len(items)
        with self._wake:
            self._ready.append(items)
            self._wake.notify()

    def _taken(self) -> None:
        with self._read:
            self._unread = max(self._unread - 1, 0)
            self._read.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is left, then stop the courier thread."""
        self.flush()
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._courier.join(timeout)

    def _deliver_all(self) -> None:
        while True:
            with self._wake:
                while not self._ready and not self._closed:
                    self._wake.wait()
                if not self._ready:
                    return
                items = self._ready.popleft()
            for _ in range(_post(items, self._deliver)):
                self._taken()  # a closed loop takes nothing

    def _deliver(self, pairs: list[tuple[Job, Any]]) -> None:
        """On the event loop: every item into its queue."""
        deliver(pairs)
        self._taken()


class DirectOutbox:
    """Events collected by a thread other than the worker (the prefill lane,
    serving/continuous.py), handed to each event loop by that thread itself, in one
    call_soon_threadsafe per loop, when it flushes.

    No courier and no pacing: `flush` returns once the items are posted, so events that the
    worker produces later for the same request (after the lane hands its row over) reach the
    loop after them (call_soon_threadsafe keeps its order). Waking the loop costs the calling
    thread the GIL for a while, which the lane can afford: it has nothing else to do then. Only
    one thread calls add and flush.
    """

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}

    def add(self, job: Job, item: object) -> None:
        self._items.setdefault(job.loop, []).append((job, item))

    def flush(self) -> None:
        """Post every collected item to its event loop (their order kept)."""
        items, self._items = self._items, {}
        _post(items, deliver)

    def close(self, timeout: float = 5.0) -> None:
        """Post what is left (`timeout` unused: nothing to wait for)."""
        self.flush()


def _post(items: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]], callback: Any) -> int:
    """Hand each event loop its pairs, in one call_soon_threadsafe(callback, pairs) per loop.
    A loop that has closed (server shutdown) has nobody listening: its jobs are cancelled.
    Returns how many loops were closed."""
    closed = 0
    for loop, pairs in items.items():
        try:
            loop.call_soon_threadsafe(callback, pairs)
        except RuntimeError:
            closed += 1
            for job, _ in pairs:
                job.cancelled = True
    return closed


def deliver(pairs: list[tuple[Job, Any]]) -> None:
    """On the event loop: every item into its request's queue, stamped `delivered`. Streams
    that receive their first items (a first token) go first: their tasks then run, and write
    their chunks, before the running streams' (each stream's items keep their order)."""
    ordered = [pair for pair in pairs if not pair[0].delivered] + [pair for pair in pairs if pair[0].delivered]
    for job, item in ordered:
        job.queue.put_nowait(item)
        job.delivered = True
        job.stamp("delivered")
