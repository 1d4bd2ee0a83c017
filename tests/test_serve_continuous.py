"""Continuous batching (serving/continuous.py) on a tiny GPT-2 exported in this session:
equality with model.generate() alone under staggered concurrency, mid-batch admission, the KV
budget, disconnects, and the fallback to micro-batching. Loopback only."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.export
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("starlette")

from live_server import LiveServer  # noqa: E402

import seqport.engine as sp  # noqa: E402
from seqport.engine.errors import ConfigError  # noqa: E402
from seqport.serving import ServeOptions, build_app  # noqa: E402
from seqport.serving.continuous import ContinuousScheduler  # noqa: E402
from seqport.serving.scheduler import MicroBatchScheduler, SchedulerLimits  # noqa: E402
from seqport.serving.scheduler_choice import make_scheduler  # noqa: E402

PROMPTS = ["the small red house where the cat sat on", "a dog ran in the park", "numbers", "one two three four",
           "seven", "where is the cat now that the dog ran away"]


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    from test_hf_causal import _write_checkpoint

    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("serve-continuous-gpt2")
    export_model(_write_checkpoint("gpt2", root / "checkpoint"), root / "artifact", progress=False)
    return sp.load(root / "artifact")


def _metric(live, name: str) -> float:
    for line in httpx.get(f"{live.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _stream_text(lines: list[str]) -> str:
    assert lines.count("[DONE]") == 1 and lines[-1] == "[DONE]"
    return "".join(json.loads(line)["choices"][0]["text"] for line in lines[:-1] if json.loads(line)["choices"])


def _sse(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_64_staggered_requests_equal_generate_alone_and_join_running_batches(causal, monkeypatch):
    # the prefill lane starts every request that arrives while rows run (the tiny model's steps
    # are shorter than LANE_MIN_STEP_S, which would leave most of them to the worker)
    monkeypatch.setattr(ContinuousScheduler, "LANE_MIN_STEP_S", 0.0)
    cases = []
    for i in range(64):
        case = {"model": "gpt2", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 2 + (i * 7) % 29}
        case.update({"temperature": 0.8, "seed": 100 + i} if i % 3 == 0 else {"temperature": 0})
        cases.append(case)
    options = ServeOptions(model_name="gpt2", max_batch_rows=8, max_queue=64)
    with LiveServer(build_app(causal, options)) as live:
        assert isinstance(live.app.state.seqport.scheduler, ContinuousScheduler)

        def ask(i: int) -> str:
            time.sleep(0.003 * (i % 8))  # staggered: requests arrive while others decode
            if i % 2:
                response = httpx.post(f"{live.url}/v1/completions", json=cases[i], timeout=60)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["text"]
            with httpx.stream("POST", f"{live.url}/v1/completions", json={**cases[i], "stream": True}, timeout=60) as r:
                assert r.status_code == 200
                return _stream_text(_sse(r))

        with ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(ask, range(len(cases))))
        admitted = _metric(live, "seqport_mid_batch_admissions_total")
        steps, rows = _metric(live, "seqport_batch_rows_count"), _metric(live, "seqport_batch_rows_sum")
        placed = live.app.state.seqport.scheduler.placed_in_slots
        lane_started = _metric(live, "seqport_prefill_lane_requests_total")
        assert lane_started == live.app.state.seqport.scheduler.lane_started
    for i, (case, text) in enumerate(zip(cases, texts)):
        sampling = {"do_sample": True, "temperature": 0.8, "seed": case["seed"]} if case["temperature"] else {}
        expected = causal.generate([case["prompt"]], max_new_tokens=case["max_tokens"], **sampling)[0].text
        assert text == expected, f"request {i} {case}"
    assert admitted > 0, "no request joined a batch that was already running"
    assert rows > steps, "no step decoded more than one row"
    assert placed > 0, "no request took the slot of one that left"
    assert lane_started > 0, "the prefill lane started no request"


def test_encoder_decoder_64_staggered_requests_equal_generate_alone(fresh_export):
    from tiny import SENTENCES

    seq2seq = sp.load(fresh_export[1])  # exported now: its decoder takes position_ids and attention_mask
    assert seq2seq.row_positions
    cases = []
    for i in range(64):
        case = {"model": "seed", "prompt": SENTENCES[i % len(SENTENCES)], "max_tokens": 2 + (i * 5) % 23}
        case.update({"temperature": 0.7, "seed": 40 + i} if i % 3 == 1 else {"temperature": 0})
        cases.append(case)
    with LiveServer(build_app(seq2seq, ServeOptions(model_name="seed", max_batch_rows=8))) as live:
        assert isinstance(live.app.state.seqport.scheduler, ContinuousScheduler)

        def ask(i: int) -> str:
            time.sleep(0.003 * (i % 8))
            path = "/v1/translations" if i % 4 == 3 else "/v1/completions"
            body = cases[i] if path == "/v1/completions" else {**cases[i], "input": cases[i]["prompt"]}
            if path == "/v1/translations":
                body.pop("prompt")
            with httpx.stream("POST", f"{live.url}{path}", json={**body, "stream": True}, timeout=60) as r:
                assert r.status_code == 200, r.read()
                return _stream_text(_sse(r))

        with ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(ask, range(len(cases))))
        admitted = _metric(live, "seqport_mid_batch_admissions_total")
        placed = live.app.state.seqport.scheduler.placed_in_slots
    for i, (case, text) in enumerate(zip(cases, texts)):
        sampling = {"do_sample": True, "temperature": 0.7, "seed": case["seed"]} if case["temperature"] else {}
        expected = seq2seq.generate([case["prompt"]], max_new_tokens=case["max_tokens"], **sampling)[0].text
        assert text == expected, f"request {i} {case}"
    assert admitted > 0, "no request joined a batch that was already running"
    assert placed > 0, "no request took the slot of one that left"


def test_kv_budget_bounds_the_padded_batch(causal):
    limits = SchedulerLimits(max_batch_rows=8, max_queue=64)
    probe = ContinuousScheduler(causal, limits)
    probe.close(1.0)
    from seqport.serving.jobs import GenerationRequest

    config = causal.default_config.replace(max_new_tokens=20, do_sample=False)
    worst = probe.kv_bytes(GenerationRequest("x", causal.input_ids([PROMPTS[0]])[0], config))
    options = ServeOptions(model_name="gpt2", max_batch_rows=8, kv_budget_mb=2.5 * worst / 2**20)
    with LiveServer(build_app(causal, options)) as live:

        def ask(i: int) -> int:
            body = {"model": "gpt2", "prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0}
            return httpx.post(f"{live.url}/v1/completions", json=body, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(ask, range(8))) == {200}
        within_two = _metric(live, 'seqport_batch_rows_bucket{le="2.0"}')
        assert within_two == _metric(live, "seqport_batch_rows_count"), "a step held more rows than the budget"
        assert _metric(live, "seqport_batch_rows_sum") > _metric(live, "seqport_batch_rows_count")


class _ServerProcess:
    """`python -m seqport.serving FOLDER` on a free loopback port, in a process of its own, so its
    RSS is the server's alone: the 32 client threads of the test grow their own memory (httpx),
    which a server sharing their process would be charged for (docs/serving.md, "Memory over
    many requests")."""

    def __init__(self, folder, *options: str) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "seqport.serving", str(folder), "--port", str(port), *options]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> _ServerProcess:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and self.process.poll() is None, "the server did not start"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.process.terminate()  # graceful: uvicorn and the scheduler shut down
        try:
            self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=10)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


def test_200_streams_with_30_percent_disconnects(causal):
    options = ("--model-name", "gpt2", "--max-batch-rows", "16", "--max-queue", "256")
    with _ServerProcess(causal.folder, *options) as live:

        def run(i: int) -> tuple[int, list[str] | None]:
            leaves = i % 10 < 3
            body = {"model": "gpt2", "prompt": PROMPTS[i % len(PROMPTS)], "stream": True, "temperature": 0,
                    "max_tokens": 24, **({"min_tokens": 24} if leaves else {})}
            with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=60) as response:
                if leaves:  # a client that goes away after two pieces
                    lines = response.iter_lines()
                    [next(lines) for _ in range(3)]
                    return response.status_code, None
                return response.status_code, _sse(response)

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(run, range(64)))  # warm-up: the server's first buffers and arenas
            before = live.rss_bytes()
            results = list(pool.map(run, range(200)))
        _wait_for(lambda: _metric(live, "seqport_running_rows") == 0, timeout=1.0)
        after = live.rss_bytes()
        assert {status for status, _ in results} == {200}
        for _, lines in results:
            if lines is not None:
                _stream_text(lines)  # exactly one [DONE], last
        assert sum(lines is None for _, lines in results) == 60
        assert _metric(live, "seqport_cancelled_requests_total") >= 1
        assert after < 1.1 * before, f"the server's RSS grew from {before} to {after} bytes"


def test_artifacts_that_cannot_merge_rows_fall_back_to_micro_batching(causal, model, caplog):
    limits = SchedulerLimits()
    with caplog.at_level("INFO", logger="seqport.serving.scheduler_choice"):
        seq2seq = make_scheduler(model, limits, "continuous")  # tests/data/tiny_artifact: exported before
    forced = make_scheduler(causal, limits, "micro")
    try:
        assert type(seq2seq) is MicroBatchScheduler and type(forced) is MicroBatchScheduler
        assert "takes no per-row position_ids and attention_mask" in caplog.text
    finally:
        seq2seq.close(1.0)
        forced.close(1.0)
    with pytest.raises(ConfigError, match="scheduler must be one of continuous, micro"):
        make_scheduler(causal, limits, "orca")
    with caplog.at_level("INFO", logger="seqport.serving.scheduler_choice"):
        make_scheduler(causal, limits, "continuous", lane="encode", step_priority="idle").close(1.0)
    assert "continuous batching (up to 8 rows, prefill lane encode, step priority idle)" in caplog.text
