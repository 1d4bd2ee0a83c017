"""A lean streaming client for serve_load.py: one HTTP/1.1 keep-alive connection per simulated
client over asyncio streams, reading the chunked SSE body as it arrives.

The load benchmark runs its 16 clients on the same cores as the server, so whatever the clients
spend is taken from the server: httpx (httpcore, anyio and h11's pure-Python parser) cost about
4 ms of CPU per streamed request here, about half of what the server spends on it. This client
does the same work (send the request, time the first chunk with choices, read the usage chunk,
parse every chunk's JSON) with asyncio's streams. `serve_load.py --client httpx` keeps the
httpx client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit


class StreamTally:
    """A streamed completion's figures from its `data:` payloads, for either client: the time of
    the first chunk with choices and the usage chunk's completion tokens."""

    def __init__(self, start: float) -> None:
        self.start, self.tokens = start, 0
        self.first: float | None = None

    def event(self, payload: str | bytes) -> None:
        """Take one event's payload (what follows `data: `)."""
        if payload in ("[DONE]", b"[DONE]"):
            return
        chunk = json.loads(payload)
        if chunk.get("choices") and self.first is None:
            self.first = time.perf_counter()
        if chunk.get("usage"):
            self.tokens = chunk["usage"]["completion_tokens"]

    def result(self) -> dict[str, float]:
        """{"ttft", "e2e", "tokens"} (seconds), the stream having just ended."""
        end = time.perf_counter()
        return {"ttft": (self.first or end) - self.start, "e2e": end - self.start, "tokens": self.tokens}


class SSEConnection:
    """One keep-alive HTTP/1.1 connection that posts streaming requests, one at a time."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, float]:
        """POST `body` as JSON and read its event stream: {"ttft", "e2e", "tokens"} (seconds)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
        start = time.perf_counter()
        self.writer.write(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await self._headers()
        tally, buffer = StreamTally(start), b""
        async for data in self._body():
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: "):
                    tally.event(event[6:])
        return tally.result()

    async def _headers(self) -> None:
        """Read the status line and headers. Raises on a non-200 or a body that is not chunked."""
        assert self.reader is not None
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"the server answered {status!r}")
        chunked = False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            chunked |= name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower()
        if not chunked:
            raise RuntimeError("expected a chunked event stream")

    async def _body(self) -> AsyncIterator[bytes]:
        """The chunked body's pieces as they arrive."""
        assert self.reader is not None
        while True:
            size = int((await self.reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readline()  # the blank line after the last chunk (no trailers)
                return
            yield (await self.reader.readexactly(size + 2))[:-2]

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
