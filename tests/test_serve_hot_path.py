"""The server's per-token and per-request shortcuts give what the plain code gave: stream
chunks from a template equal json.dumps of the chunk, cached generation configs are checked
as uncached ones, and a step's deliveries keep each stream's order."""

from __future__ import annotations

import asyncio
import json
import types

import pytest

pytest.importorskip("starlette")

from seqport.engine.config import GenerationConfig  # noqa: E402
from seqport.serving.completions import Call, _ChunkFormat, _delta_choice, _head  # noqa: E402
from seqport.serving.jobs import GenerationRequest, Job, TokenEvent, deliver  # noqa: E402
from seqport.serving.protocol import APIError, generation_config  # noqa: E402

TEXTS = ["", "la", ' "quoted" \\ back', "é\u00e0\n\ttab", "\u2028\U0001f600", "</script>"]


@pytest.mark.parametrize("kind", ["completions", "chat", "translations"])
def test_template_chunks_equal_json_dumps_of_the_chunk(kind):
    call = Call(kind, 'm"odel', [[1, 2]], GenerationConfig())
    chunks = _ChunkFormat(call)
    for index, text, reason in [(0, t, None) for t in TEXTS] + [(3, "x", "stop"), (1, "", "length")]:
        chunk = {**_head(call), "choices": [_delta_choice(kind, index, text, reason)]}
        assert chunks.choice(index, text, reason) == f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        assert json.loads(chunks.choice(index, text, reason)[len("data: ") :]) == chunk
    role = {**_head(call), "choices": [_delta_choice("chat", i, "", None, True) for i in range(2)]}
    assert chunks.role(2) == f"data: {json.dumps(role, ensure_ascii=False)}\n\n"


def test_cached_configs_are_checked_like_uncached_ones():
    defaults = GenerationConfig()
    assert generation_config({"top_k": 5}, defaults).top_k == 5
    with pytest.raises(APIError, match="top_k must be an integer"):  # 5.0 == 5 hashes alike: still refused
        generation_config({"top_k": 5.0}, defaults)
    assert generation_config({"top_k": 5}, defaults) is generation_config({"top_k": 5}, defaults)
    assert generation_config({"stop": ["a", "b"]}, defaults).stop == ("a", "b")
    with pytest.raises(APIError, match="top_k must be an integer"):  # unhashable values go uncached
        generation_config({"top_k": [5]}, defaults)


def test_new_streams_are_delivered_first_and_each_stream_keeps_its_order():
    async def run() -> list[str]:
        loop, order = asyncio.get_running_loop(), []
        jobs = {name: Job(GenerationRequest(name, [1], GenerationConfig()), loop, asyncio.Queue()) for name in "abc"}
        jobs["a"].delivered = jobs["c"].delivered = True  # running streams; b is new
        events = [TokenEvent(0, "a1"), TokenEvent(0, "b1"), TokenEvent(0, "c1"), TokenEvent(0, "b2"), None]
        owners = "abcbc"
        for job in jobs.values():
            job.queue.put_nowait = lambda item, name=job.request.request_id: order.append((name, item))
        deliver([(jobs[name], event) for name, event in zip(owners, events)])
        assert all(job.delivered for job in jobs.values())
        return [f"{name}:{item.text if item else None}" for name, item in order]

    assert asyncio.run(run()) == ["b:b1", "b:b2", "a:a1", "c:c1", "c:None"]


def test_access_log_is_off_unless_asked_for(tiny_artifact, monkeypatch):
    import argparse

    import uvicorn

    import seqport.serving.server as server
    from seqport.serving.cli import add_parser

    seen = []
    loaded = types.SimpleNamespace(manifest=types.SimpleNamespace(architecture="encoder-decoder"))
    monkeypatch.setattr(server, "load", lambda *a, **k: loaded)
    monkeypatch.setattr(server, "build_app", lambda *a, **k: "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: seen.append(k["access_log"]))
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    for flags, expected in (([], False), (["--access-log"], True), (["--no-access-log"], False)):
        args = parser.parse_args(["serve", str(tiny_artifact), *flags])
        assert args.run(args) == 0 and seen[-1] is expected


@pytest.mark.parametrize("ending", ["error", "disconnect"])
def test_event_stream_ends_as_starlettes_streaming_response(ending):
    from starlette.responses import StreamingResponse

    from seqport.serving.completions import EventStream

    async def run(cls) -> tuple:
        sent, closed = [], []

        async def body():
            try:
                yield "data: 1\n\n"
                if ending == "error":
                    raise RuntimeError("the stream failed")
                await asyncio.sleep(30)  # the client leaves meanwhile
                yield "data: 2\n\n"
            finally:
                closed.append(True)

        async def receive():
            await asyncio.sleep(0.05 if ending == "disconnect" else 30)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}}  # as uvicorn says
        try:
            await asyncio.wait_for(cls(body(), media_type="text/event-stream")(scope, receive, send), 10)
        except RuntimeError as exc:
            return str(exc), [m.get("body") for m in sent], closed
        return None, [m.get("body") for m in sent], closed

    expected = asyncio.run(run(StreamingResponse))
    assert asyncio.run(run(EventStream)) == expected
    assert expected[0] == ("the stream failed" if ending == "error" else None)
    assert expected[1] == [None, b"data: 1\n\n"] and expected[2] == [True]
