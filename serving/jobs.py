"""What a scheduler passes around: a request, its token events, and the job that carries both."""

from __future__ import annotations

import asyncio
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
    """

    request_id: str
    prompt_ids: list[int]
    config: GenerationConfig

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
    None at the end, or an exception.
    """

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    kv_bytes: int = 0
    cancelled: bool = False
    done: bool = False
    finished_choices: set = field(default_factory=set)
    outbox: Outbox | None = None

    @property
    def live(self) -> bool:
        return not (self.cancelled or self.done)

    def emit(self, event: TokenEvent) -> None:
        if not self.live:
            return
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
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop closed (server shutdown): nobody is listening
            self.cancelled = True

    def _post(self, item: object) -> None:
        assert self.outbox is not None
        self.outbox.add(self, item)


class Outbox:
    """Events the worker produced during one decoder step, handed to each event loop in one
    call_soon_threadsafe when the step ends.

    Waking the event loop costs a thread handoff (a write to its self-pipe and the GIL changing
    hands); doing it once per step instead of once per row and token keeps the worker from
    queueing behind the event loop on a loaded CPU. Only the worker thread uses an outbox.
    """

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}

    def add(self, job: Job, item: object) -> None:
        self._items.setdefault(job.loop, []).append((job, item))

    def flush(self) -> None:
        """Hand every collected item to its queue (in the order they were added)."""
        items, self._items = self._items, {}
        for loop, pairs in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, pairs)
            except RuntimeError:  # the event loop closed (server shutdown): nobody is listening
                for job, _ in pairs:
                    job.cancelled = True


def _deliver(pairs: list[tuple[Job, Any]]) -> None:
    for job, item in pairs:
        job.queue.put_nowait(item)
