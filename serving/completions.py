"""One generation request over HTTP: submit its prompts, then answer in OpenAI's shape, whole
or as server-sent events (`data: {chunk}` lines ending with `data: [DONE]`)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from seqport.engine.config import GenerationConfig
from seqport.engine.errors import InputError, SeqportError
from seqport.serving.jobs import GenerationRequest, TokenEvent, stage_seconds
from seqport.serving.metrics import ServerMetrics
from seqport.serving.protocol import APIError
from seqport.serving.scheduler import QueueFull, Scheduler, ShuttingDown

if sys.version_info < (3, 11):  # anyio's backport on Python 3.10
    from exceptiongroup import BaseExceptionGroup

# (object of a whole answer, object of a stream chunk) per endpoint kind
OBJECTS = {
    "completions": ("text_completion", "text_completion"),
    "chat": ("chat.completion", "chat.completion.chunk"),
    "translations": ("translation", "translation.chunk"),
}


@dataclass
class Call:
    """One HTTP generation call: its prompts (checked ids), options and answer shape."""

    kind: str
    model_name: str
    prompts: list[list[int]]
    config: GenerationConfig
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)
    stamps: dict[str, float] = field(default_factory=dict)  # the first prompt's way to its first token

    def requests(self) -> list[GenerationRequest]:
        """One scheduler request per prompt; prompt i samples with seed + i, as generate() would.
        The first prompt's records its stamps in `self.stamps`."""
        seed = self.config.seed
        self.stamps = {"arrival": self.started}
        return [
            GenerationRequest(
                f"{self.id}-{i}", ids, self.config if seed is None else self.config.replace(seed=seed + i),
                self.stamps if i == 0 else None,
            )
            for i, ids in enumerate(self.prompts)
        ]  # fmt: skip


class _Timer:
    """Per-request latency metrics: time to first token, between tokens, end to end."""

    def __init__(self, metrics: ServerMetrics, started: float) -> None:
        self.metrics, self.started, self.last = metrics, started, None

    def token(self, event: TokenEvent) -> None:
        now = time.perf_counter()
        if event.tokens:
            if self.last is None:
                self.metrics.ttft.observe(now - self.started)
            else:
                self.metrics.inter_token.observe(now - self.last)
            self.last = now
            self.metrics.generated.inc(event.tokens)

    def done(self) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.started)


async def answer(call: Call, scheduler: Scheduler, metrics: ServerMetrics) -> Response:
    """Submit the call's prompts and answer (429 when the queue is full, 400 on a bad input)."""
    streams, firsts = await _start(call, scheduler)
    metrics.prompt.inc(sum(map(len, call.prompts)))
    timer = _Timer(metrics, call.started)
    if call.stream:
        body = _sse(call, streams, firsts, timer, metrics)
        return EventStream(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        return JSONResponse(await _whole(call, streams, firsts, timer))
    finally:
        await _close(streams)


class EventStream(StreamingResponse):
    """A StreamingResponse whose body the request's own task writes, while a task of its own
    listens for the client's disconnect (Starlette does the reverse for ASGI < 2.4, as uvicorn
    speaks). The first chunk is ready when the response starts (the first token came first), so
    it goes out at once, not after a new task has waited behind every running stream's task
    that the same step woke. A disconnect cancels the writing as before."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = tuple(map(int, scope.get("asgi", {}).get("spec_version", "2.0").split(".")))
        if scope["type"] != "http" or spec >= (2, 4):
            await super().__call__(scope, receive, send)
            return
        try:
            async with anyio.create_task_group() as group:

                async def listen() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(listen)
                await self.stream_response(send)
                group.cancel_scope.cancel()
        except BaseExceptionGroup as exc:  # one error (the stream's): raise it as Starlette does
            if len(exc.exceptions) == 1:
                raise exc.exceptions[0] from None
            raise
        if self.background is not None:
            await self.background()


async def _start(call: Call, scheduler: Scheduler) -> tuple[list[AsyncIterator[TokenEvent]], list[TokenEvent]]:
    """Submit every prompt, then wait for each first event, so errors answer 4xx before any
    byte of a 200 is sent."""
    streams: list[AsyncIterator[TokenEvent]] = []
    try:
        for request in call.requests():
            streams.append(await scheduler.submit(request))
        return streams, [await anext(s) for s in streams]
    except QueueFull as exc:
        await _close(streams)
        raise APIError(
            429, str(exc), "rate_limit_error", code="queue_full", headers={"Retry-After": str(exc.retry_after)}
        ) from None
    except ShuttingDown as exc:
        await _close(streams)
        raise APIError(503, str(exc), "server_error", code="shutting_down") from None
    except SeqportError as exc:
        await _close(streams)
        raise APIError(400, str(exc), param="prompt" if isinstance(exc, InputError) else None) from None
    except BaseException:
        await _close(streams)
        raise


async def _events(
    streams: list[AsyncIterator[TokenEvent]], firsts: list[TokenEvent], timer: _Timer
) -> AsyncIterator[tuple[int, TokenEvent]]:
    """(prompt index, event) for every event of every prompt, prompt by prompt (they all run
    meanwhile: events of later prompts wait in their queues)."""
    for index, (stream, first) in enumerate(zip(streams, firsts)):
        timer.token(first)
        yield index, first
        async for event in stream:
            timer.token(event)
            yield index, event
    timer.done()


async def _whole(
    call: Call, streams: list[AsyncIterator[TokenEvent]], firsts: list[TokenEvent], timer: _Timer
) -> dict[str, Any]:
    n = call.config.num_return_sequences
    texts: dict[int, list[str]] = {}
    reasons: dict[int, str | None] = {}
    tokens = 0
    async for prompt, event in _events(streams, firsts, timer):
        index = prompt * n + event.choice
        texts.setdefault(index, []).append(event.text)
        reasons[index] = event.finish_reason or reasons.get(index)
        tokens += event.tokens
    choices = [_choice(call.kind, i, "".join(texts[i]), reasons[i]) for i in sorted(texts)]
    return {**_head(call, whole=True), "choices": choices, "usage": _usage(call, tokens)}


async def _sse(
    call: Call,
    streams: list[AsyncIterator[TokenEvent]],
    firsts: list[TokenEvent],
    timer: _Timer,
    metrics: ServerMetrics,
) -> AsyncIterator[str]:
    """The call's SSE body. A chunk that the next one follows without waiting (a finish, the
    usage chunk, `[DONE]`) goes out in the same write."""
    n, tokens, complete = call.config.num_return_sequences, 0, False
    chunks = _ChunkFormat(call)
    pending = chunks.role(n * len(streams)) if call.kind == "chat" else ""
    single = n == 1 and len(streams) == 1  # its finish is the last event: usage and [DONE] follow at once
    try:
        async for prompt, event in _events(streams, firsts, timer):
            tokens += event.tokens
            if event.text or event.finish_reason:
                pending += chunks.choice(prompt * n + event.choice, event.text, event.finish_reason)
            if pending and not (single and event.finish_reason):
                yield pending
                pending = ""
                _written(call, metrics)
        if call.include_usage:
            pending += _data({**_head(call), "choices": [], "usage": _usage(call, tokens)})
        yield pending + "data: [DONE]\n\n"
        _written(call, metrics)
        complete = True
    finally:
        if not complete:
            metrics.cancelled.inc()
        await _close(streams)


class _ChunkFormat:
    """A call's stream chunks from a preformatted template: the same text as json.dumps of the
    chunk dict (keys in the same order), built with one json.dumps of the text piece per token
    instead of one of the whole nested chunk."""

    def __init__(self, call: Call) -> None:
        self.kind = call.kind
        self.head = _data({**_head(call), "choices": []})[: -len("]}\n\n")]  # 'data: {"id": ..., "choices": ['

    def role(self, count: int) -> str:
        """Chat's first chunk: every choice's `delta.role`."""
        choices = (json.dumps(_delta_choice("chat", i, "", None, True), ensure_ascii=False) for i in range(count))
        return f"{self.head}{', '.join(choices)}]}}\n\n"

    def choice(self, index: int, text: str, reason: str | None) -> str:
        """One choice's chunk: its new text and finish reason (None until its last)."""
        piece = json.dumps(text, ensure_ascii=False)
        field = f'"delta": {{"content": {piece}}}' if self.kind == "chat" else f'"text": {piece}'
        finish = "null" if reason is None else json.dumps(reason)
        return f'{self.head}{{"index": {index}, {field}, "logprobs": null, "finish_reason": {finish}}}]}}\n\n'


def _written(call: Call, metrics: ServerMetrics) -> None:
    """Stamp the call's first chunk as handed to the transport (once)."""
    if "written" not in call.stamps:
        call.stamps["written"] = time.perf_counter()
        metrics.observe_stages(stage_seconds(call.stamps))


async def _close(streams: list[AsyncIterator[TokenEvent]]) -> None:
    for stream in streams:
        await stream.aclose()  # the scheduler drops a request whose consumer closed its events


def _head(call: Call, whole: bool = False) -> dict[str, Any]:
    whole_object, chunk_object = OBJECTS[call.kind]
    return {
        "id": call.id,
        "object": whole_object if whole else chunk_object,
        "created": call.created,
        "model": call.model_name,
    }


def _choice(kind: str, index: int, text: str, reason: str | None) -> dict[str, Any]:
    if kind == "chat":
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": reason,
        }
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


def _delta_choice(kind: str, index: int, text: str, reason: str | None, first: bool = False) -> dict[str, Any]:
    if kind == "chat":
        delta = {"role": "assistant", "content": ""} if first else {"content": text}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


def _usage(call: Call, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(map(len, call.prompts))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _data(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
