"""The engine in a process of its own (`seqport serve --engine-process`, serving/process.py):
outputs equal to model.generate() alone, both schedulers, metrics and first-token stamps through
the pipe, disconnect-cancel, errors of a dead engine as 503, graceful shutdown, and no orphan
engine process when the server is killed. Loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("starlette")

from live_server import LiveServer  # noqa: E402
from tiny import SENTENCES  # noqa: E402

import seqport.engine as sp  # noqa: E402
from seqport.engine.runtime import RuntimeOptions  # noqa: E402
from seqport.serving import ServeOptions, build_app  # noqa: E402
from seqport.serving.process import ProcessScheduler  # noqa: E402

ONE_THREAD = RuntimeOptions(intra_op_threads=1, allow_spinning=False)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _stream(url: str, body: dict) -> str:
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines.count("[DONE]") == 1 and lines[-1] == "[DONE]"
    return "".join(json.loads(line)["choices"][0]["text"] for line in lines[:-1] if json.loads(line)["choices"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.export
@pytest.mark.parametrize("scheduler", ["continuous", "micro"])
def test_the_engine_process_answers_as_generate_alone(fresh_export, scheduler):
    seq2seq = sp.load(fresh_export[1], options=ONE_THREAD)  # its decoder takes per-row positions: continuous
    options = ServeOptions(model_name="seed", scheduler=scheduler, engine_process=True, runtime=ONE_THREAD)
    cases = [{"model": "seed", "prompt": SENTENCES[i % len(SENTENCES)], "max_tokens": 2 + (i * 5) % 17,
              "temperature": 0} for i in range(16)]  # fmt: skip
    with LiveServer(build_app(seq2seq, options)) as live:
        scheduler_ = live.app.state.seqport.scheduler
        assert isinstance(scheduler_, ProcessScheduler) and scheduler_.pid != os.getpid()

        def ask(i: int) -> str:
            time.sleep(0.003 * (i % 8))
            if i % 2:
                return _stream(live.url, cases[i])
            response = httpx.post(f"{live.url}/v1/completions", json=cases[i], timeout=60)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["text"]

        with ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(ask, range(len(cases))))
        metrics = httpx.get(f"{live.url}/metrics", timeout=10).text
        assert _metric(live.url, "seqport_batch_rows_count") > 0  # the child's batches reach /metrics
        assert 'seqport_first_token_stage_seconds_count{stage="first_token"}' in metrics
        assert _metric(live.url, "seqport_running_rows") == 0
        pid = scheduler_.pid
    assert not _alive(pid), "the engine process outlived the server's shutdown"
    for i, (case, text) in enumerate(zip(cases, texts)):
        expected = seq2seq.generate([case["prompt"]], max_new_tokens=case["max_tokens"])[0].text
        assert text == expected, f"request {i} {case}"


@pytest.mark.export
def test_a_client_that_leaves_frees_its_row_and_a_dead_engine_answers_503(fresh_export):
    seq2seq = sp.load(fresh_export[1], options=ONE_THREAD)
    options = ServeOptions(model_name="seed", engine_process=True, runtime=ONE_THREAD)
    with LiveServer(build_app(seq2seq, options)) as live:
        body = {"model": "seed", "prompt": SENTENCES[0], "max_tokens": 30, "min_tokens": 30, "stream": True}
        with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            [next(lines) for _ in range(3)]  # then leaves
        deadline = time.monotonic() + 1.0
        while _metric(live.url, "seqport_running_rows") != 0:
            assert time.monotonic() < deadline, "the row was not freed within a second"
            time.sleep(0.01)
        os.kill(live.app.state.seqport.scheduler.pid, signal.SIGKILL)
        time.sleep(0.5)
        response = httpx.post(f"{live.url}/v1/completions", json={"model": "seed", "prompt": "x"}, timeout=30)
        assert response.status_code == 503 and response.json()["error"]["code"] == "shutting_down"


def test_the_engine_process_dies_with_a_killed_server(tiny_artifact):
    port_probe = __import__("socket").socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    command = [sys.executable, "-m", "seqport.serving", str(tiny_artifact), "--port", str(port), "--engine-process"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with open(f"/proc/{server.pid}/task/{server.pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
        engines = [pid for pid in children if "spawn_main" in open(f"/proc/{pid}/cmdline").read()]
        assert len(engines) == 1
        server.kill()  # no graceful shutdown: the engine must notice on its own
        server.wait(10)
        deadline = time.monotonic() + 10
        while _alive(engines[0]):
            assert time.monotonic() < deadline, "the engine process outlived its killed server"
            time.sleep(0.05)
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, message: tuple) -> None:
        self.sent.append(message)


def test_the_worker_runs_at_most_one_step_ahead_of_the_event_loop():
    """PipeOutbox pacing: a worker's flush waits until the parent took the step message before
    (or PACE_TIMEOUT_S passed); the main thread, which reads the "taken" answers, never waits."""
    from seqport.engine.config import GenerationConfig
    from seqport.serving.jobs import GenerationRequest, Job, TokenEvent
    from seqport.serving.process import PipeOutbox

    pipe = _Pipe()
    outbox = PipeOutbox(pipe)  # made by this (the main) thread
    outbox.PACE_TIMEOUT_S = 5.0
    job = Job(GenerationRequest("r", [1, 2], GenerationConfig()), None, None, outbox=outbox)

    def step(text: str) -> None:
        outbox.add(job, TokenEvent(0, text))
        outbox.flush()

    with ThreadPoolExecutor(1) as worker:
        worker.submit(step, "a").result(timeout=5)  # nothing untaken: sent at once
        second = worker.submit(step, "b")
        time.sleep(0.3)
        assert [m[1][0][1].text for m in pipe.sent] == ["a"] and not second.done()
        step("main")  # the main thread is not held back by the untaken message
        assert [m[1][0][1].text for m in pipe.sent] == ["a", "main"]
        outbox.taken(2)
        second.result(timeout=5)
        assert [m[1][0][1].text for m in pipe.sent] == ["a", "main", "b"]
