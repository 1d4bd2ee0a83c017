"""The micro-batching scheduler alone (no HTTP): shutdown, cancelling waiting work, the KV
budget; and the `serve` command line."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
import types

import pytest

pytest.importorskip("starlette")

from live_server import SlowModel  # noqa: E402
from tiny import SENTENCES  # noqa: E402

from seqport.engine.errors import ConfigError  # noqa: E402
from seqport.engine.runtime import RuntimeOptions  # noqa: E402
from seqport.serving import GenerationRequest, MicroBatchScheduler, SchedulerLimits, ShuttingDown  # noqa: E402
from seqport.serving.cli import add_parser  # noqa: E402


def _request(model, name: str, max_new_tokens: int = 6, **options) -> GenerationRequest:
    config = model.default_config.replace(max_new_tokens=max_new_tokens, **options)
    return GenerationRequest(name, model.input_ids([SENTENCES[0]])[0], config)


async def _drain(events) -> list:
    return [event async for event in events]


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_close_fails_waiting_and_stuck_running_requests(model):
    gate = threading.Event()
    scheduler = MicroBatchScheduler(SlowModel(model, gate=gate), SchedulerLimits(max_batch_rows=1, batch_wait_s=0))

    async def scenario():
        running = await scheduler.submit(_request(model, "a"))
        await _until(lambda: scheduler.running_rows == 1)
        waiting = await scheduler.submit(_request(model, "b"))
        assert scheduler.queue_depth == 1
        closing = asyncio.create_task(asyncio.to_thread(scheduler.close, 0.2))
        with pytest.raises(ShuttingDown, match="before this request started"):
            await _drain(waiting)
        with pytest.raises(ShuttingDown, match="while this request ran"):
            await _drain(running)
        gate.set()  # the engine call returns; the worker sees nobody is listening and exits
        await closing
        with pytest.raises(ShuttingDown, match="shutting down"):
            await scheduler.submit(_request(model, "c"))

    asyncio.run(scenario())
    scheduler._thread.join(5)
    assert not scheduler._thread.is_alive()


def test_close_lets_running_requests_finish_within_the_grace(model):
    scheduler = MicroBatchScheduler(SlowModel(model, delay=0.01), SchedulerLimits())

    async def scenario():
        events = await scheduler.submit(_request(model, "a", max_new_tokens=10))
        await _until(lambda: scheduler.running_rows == 1)
        closing = asyncio.create_task(asyncio.to_thread(scheduler.close, 10.0))
        got = await _drain(events)
        await closing
        return got

    events = asyncio.run(scenario())
    expected = model.generate([SENTENCES[0]], max_new_tokens=10)[0]
    assert "".join(e.text for e in events) == expected.text and events[-1].finish_reason is not None


def test_cancelled_waiting_request_leaves_the_queue(model):
    gate = threading.Event()
    scheduler = MicroBatchScheduler(SlowModel(model, gate=gate), SchedulerLimits(max_batch_rows=1, batch_wait_s=0))

    async def scenario():
        first = await scheduler.submit(_request(model, "a"))
        await _until(lambda: scheduler.running_rows == 1)
        await scheduler.submit(_request(model, "b"))
        assert scheduler.queue_depth == 1
        scheduler.cancel("b")
        assert scheduler.queue_depth == 0
        gate.set()
        return await _drain(first)

    assert asyncio.run(scenario())[-1].finish_reason is not None
    scheduler.close(5)


def test_kv_budget_and_row_limit_refuse_oversized_requests(model):
    request = _request(model, "a", max_new_tokens=30)
    limits = SchedulerLimits(max_batch_rows=2, kv_budget_bytes=1)
    scheduler = MicroBatchScheduler(model, limits)
    kv = model.manifest.kv
    per_token = 2 * kv.num_layers * kv.num_kv_heads * kv.head_dim * 4
    assert scheduler.kv_bytes(request) == per_token * (30 + 1 + len(request.prompt_ids))

    async def scenario():
        with pytest.raises(ConfigError, match="KV cache, more than the server's budget"):
            await scheduler.submit(request)
        beams = _request(model, "b", num_beams=3)
        with pytest.raises(ConfigError, match="needs 3 decoder rows"):
            await scheduler.submit(beams)

    asyncio.run(scenario())
    scheduler.close(5)


def test_serve_command_line(tiny_artifact):
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["serve", str(tiny_artifact), "--port", "0", "--max-batch-rows", "4", "--kv-budget-mb", "8"]
    )
    assert (args.artifact, args.host, args.port, args.max_batch_rows, args.kv_budget_mb) == (
        str(tiny_artifact),
        "127.0.0.1",
        0,
        4,
        8.0,
    )
    assert parser.parse_args(["serve"]).artifact is None
    bad = parser.parse_args(["serve", str(tiny_artifact), "--max-queue", "0"])
    with pytest.raises(ConfigError, match="--max-queue must be >= 1"):
        bad.run(bad)
    run = subprocess.run(
        [sys.executable, "-m", "seqport.serving", "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and "--max-batch-rows" in run.stdout


def test_the_server_turns_onnxruntime_spinning_off(tiny_artifact, monkeypatch):
    import seqport.serving.server as server

    calls = []
    monkeypatch.setattr(server, "run_server", lambda *a, runtime, **k: calls.append(runtime))
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    for flags, spinning in (([], False), (["--ort-spinning"], True)):
        args = parser.parse_args(["serve", str(tiny_artifact), "--threads", "2", *flags])
        assert args.run(args) == 0
        assert (calls[-1].allow_spinning, calls[-1].intra_op_threads) == (spinning, 2)
        assert calls[-1].huge_pages  # the default
    args = parser.parse_args(["serve", str(tiny_artifact), "--no-huge-pages"])
    assert args.run(args) == 0 and calls[-1].huge_pages is False


def test_the_server_defaults_to_one_intra_op_thread_fewer_than_its_cpus(tiny_artifact, monkeypatch):
    import seqport.serving.server as server
    import seqport.serving.threads as serve_threads

    calls = []
    monkeypatch.setattr(server, "run_server", lambda *a, runtime, **k: calls.append(runtime))
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    for cpus, threads in ((1, 1), (2, 1), (8, 7)):
        monkeypatch.setattr(serve_threads.os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)), raising=False)
        args = parser.parse_args(["serve", str(tiny_artifact)])
        assert args.run(args) == 0
        assert calls[-1].intra_op_threads == threads and serve_threads.default_threads() == threads
    args = parser.parse_args(["serve", str(tiny_artifact), "--threads", "0"])  # 0: onnxruntime decides
    assert args.run(args) == 0 and calls[-1].intra_op_threads == 0


def test_an_encoder_decoder_models_encoder_gets_every_cpu(tiny_artifact, monkeypatch):
    import seqport.serving.server as server
    import seqport.serving.threads as serve_threads

    runtime = RuntimeOptions(intra_op_threads=1)
    monkeypatch.setattr(serve_threads.os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    assert serve_threads.with_encoder_threads(runtime, tiny_artifact).component_threads == {"encoder": 3}
    assert serve_threads.with_encoder_threads(runtime, tiny_artifact, 1).for_component("encoder").intra_op_threads == 1
    own = RuntimeOptions(component_threads={"encoder": 1})
    assert serve_threads.with_encoder_threads(own, tiny_artifact) is own  # the caller's own choice stays
    decoder_only = types.SimpleNamespace(architecture="decoder-only")
    monkeypatch.setattr(serve_threads, "load_manifest", lambda _folder: decoder_only)
    assert serve_threads.with_encoder_threads(runtime, tiny_artifact) is runtime  # its encoder is the model

    seen = []
    monkeypatch.setattr(server, "run_server", lambda *a, encoder_threads, **k: seen.append(encoder_threads))
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    for flags, expected in (([], None), (["--encoder-threads", "1"], 1)):
        args = parser.parse_args(["serve", str(tiny_artifact), *flags])
        assert args.run(args) == 0 and seen[-1] == expected
    args = parser.parse_args(["serve", str(tiny_artifact), "--encoder-threads", "-1"])
    with pytest.raises(ConfigError, match="--threads and --encoder-threads must be >= 0"):
        args.run(args)
    args = parser.parse_args(["serve", str(tiny_artifact), "--ray", "--encoder-threads", "2"])
    with pytest.raises(ConfigError, match="--encoder-threads is for the local server"):
        args.run(args)


def test_the_server_says_what_it_serves_with(tiny_artifact, monkeypatch):
    import logging

    import seqport.serving.server as server
    from seqport.serving.threads import threads_summary

    assert threads_summary(RuntimeOptions(intra_op_threads=1, component_threads={"encoder": 2})) == (
        "intra-op threads 1 (encoder 2)"
    )
    assert threads_summary(RuntimeOptions()) == "intra-op threads onnxruntime's choice"
    monkeypatch.setattr(logging.getLogger("seqport.serving"), "level", logging.WARNING)
    monkeypatch.setattr(server, "run_server", lambda *a, **k: None)
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", str(tiny_artifact)])
    assert args.run(args) == 0
    assert logging.getLogger("seqport.serving").getEffectiveLevel() == logging.INFO  # its start-up lines show


def test_engine_process_is_an_option_off_by_default(tiny_artifact, monkeypatch):
    import seqport.serving.server as server

    seen = []
    monkeypatch.setattr(server, "run_server", lambda *a, options, **k: seen.append(options))
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    for flags, expected in (([], False), (["--engine-process"], True), (["--no-engine-process"], False)):
        args = parser.parse_args(["serve", str(tiny_artifact), *flags])
        assert args.run(args) == 0 and seen[-1].engine_process is expected


def test_the_cli_module_imports_without_the_serve_extra():
    code = (
        "import sys; import seqport.serving.cli; "
        "loaded = [m for m in ('starlette', 'uvicorn', 'prometheus_client', 'torch') if m in sys.modules]; "
        "assert not loaded, loaded; print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_a_bad_request_fails_alone_not_its_batch(model):
    from seqport.engine.errors import InputError

    batches: list[int] = []
    scheduler = MicroBatchScheduler(model, SchedulerLimits(batch_wait_s=0.2), on_batch=batches.append)
    good = _request(model, "good")
    bad = GenerationRequest("bad", [5] * (model.manifest.max_positions + 5), good.config)  # too long

    async def scenario():
        good_events, bad_events = await scheduler.submit(good), await scheduler.submit(bad)
        with pytest.raises(InputError, match="more than the model's maximum"):
            await _drain(bad_events)
        return await _drain(good_events)

    events = asyncio.run(scenario())
    scheduler.close(5)
    assert batches[0] == 2, "the two requests were not batched together"
    assert "".join(e.text for e in events) == model.generate([SENTENCES[0]], max_new_tokens=6)[0].text


def test_a_decoder_only_batch_takes_rows_that_get_what_they_would_alone():
    from types import SimpleNamespace

    from seqport.engine.config import GenerationConfig
    from seqport.serving.jobs import Job
    from seqport.serving.scheduler import _lengths_fit

    model = SimpleNamespace(manifest=SimpleNamespace(architecture="decoder-only", max_positions=20))

    def job(prompt: int, max_new: int) -> Job:
        request = GenerationRequest(f"r{prompt}-{max_new}", [5] * prompt, GenerationConfig(max_new_tokens=max_new))
        return Job(request, None, None)  # type: ignore[arg-type]

    assert _lengths_fit(model, [job(8, 30), job(3, 12)])  # the longest is capped alone too; 12 fits beside it
    assert not _lengths_fit(model, [job(8, 30), job(3, 13)])  # 13 tokens alone, 12 beside the 8-token prompt
    assert not _lengths_fit(model, [job(3, 30), job(8, 4)])  # 17 alone, 12 beside the longer prompt


def test_prefill_lane_option(tiny_artifact, monkeypatch):
    import seqport.serving.server as server

    seen = []
    monkeypatch.setattr(server, "run_server", lambda *a, options, **k: seen.append(options))
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    for flags, expected in (([], "first-token"), (["--prefill-lane", "encode"], "encode"),
                            (["--prefill-lane", "off"], "off")):
        args = parser.parse_args(["serve", str(tiny_artifact), *flags])
        assert args.run(args) == 0 and seen[-1].prefill_lane == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", str(tiny_artifact), "--prefill-lane", "both"])


def test_step_priority_option(tiny_artifact, monkeypatch):
    import seqport.serving.server as server

    seen = []
    monkeypatch.setattr(server, "run_server", lambda *a, options, **k: seen.append(options))
    parser = argparse.ArgumentParser(prog="seqport")
    add_parser(parser.add_subparsers(dest="command"))
    for flags, expected in (([], "normal"), (["--step-priority", "idle"], "idle")):
        args = parser.parse_args(["serve", str(tiny_artifact), *flags])
        assert args.run(args) == 0 and seen[-1].step_priority == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", str(tiny_artifact), "--step-priority", "high"])
