"""The prefill lane of continuous batching (serving/continuous.py): a request that arrives while
the worker's step runs gets its first token from the lane before that step ends; rows in the
lane count against the row limit; cancel and close cover requests in the lane. Deterministic:
the worker's (or the lane's) model calls wait at an event, nothing depends on timing. The
seq2seq exported in this session (its decoder takes per-row positions and masks)."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytestmark = pytest.mark.export
pytest.importorskip("torch")

import seqport.engine as sp  # noqa: E402
from seqport.engine.errors import ConfigError  # noqa: E402
from seqport.serving import step_priority  # noqa: E402
from seqport.serving.continuous import ContinuousScheduler  # noqa: E402
from seqport.serving.jobs import GenerationRequest  # noqa: E402
from seqport.serving.scheduler import SchedulerLimits, ShuttingDown  # noqa: E402

WORKER, LANE = "seqport-scheduler", "seqport-prefill"
SOURCES = ["the house is small", "where is the dog now", "we go home today", "one two three"]


class Gated:
    """The model, whose `method` calls ("run_decoder" or "encode") from a gated thread wait until
    the gate opens (after `free_calls` that pass); `inside[thread]` is set while one waits."""

    def __init__(self, model) -> None:
        self._model = model
        self.gates: dict[tuple[str, str], threading.Event] = {}
        self.free: dict[tuple[str, str], int] = {}
        self.inside = {WORKER: threading.Event(), LANE: threading.Event()}

    def __getattr__(self, name):
        return getattr(self._model, name)

    def close_gate(self, thread: str, method: str, free_calls: int = 0) -> threading.Event:
        self.free[thread, method] = free_calls
        self.gates[thread, method] = threading.Event()
        return self.gates[thread, method]

    def _wait(self, method: str) -> None:
        key = (threading.current_thread().name, method)
        gate = self.gates.get(key)
        if gate is None or gate.is_set():
            return
        if self.free.get(key, 0) > 0:
            self.free[key] -= 1
            return
        self.inside[key[0]].set()
        assert gate.wait(30), "the test never opened the gate"
        self.inside[key[0]].clear()

    def run_decoder(self, values, cache=None, trusted=frozenset(), runner=None):
        self._wait("run_decoder")
        return self._model.run_decoder(values, cache, trusted, runner)

    def encode(self, input_ids, attention_mask):
        self._wait("encode")
        return self._model.encode(input_ids, attention_mask)


@pytest.fixture(scope="module")
def seq2seq(fresh_export):
    model = sp.load(fresh_export[1])
    assert model.row_positions
    return model


def _scheduler(model, rows: int = 4, lane: str = "first-token") -> ContinuousScheduler:
    scheduler = ContinuousScheduler(model, SchedulerLimits(max_batch_rows=rows), lane=lane)
    scheduler.LANE_MIN_STEP_S = 0.0  # the lane takes every request that arrives while rows run
    return scheduler


def _request(model, i: int, tokens: int = 12, forced: bool = True) -> GenerationRequest:
    """Request i: greedy, `tokens` at most (exactly, when `forced`)."""
    config = model.default_config.replace(max_new_tokens=tokens, do_sample=False)
    config = config.replace(min_new_tokens=tokens) if forced else config
    return GenerationRequest(f"r{i}", model.input_ids([SOURCES[i % len(SOURCES)]])[0], config)


async def _rest(events) -> int:
    return sum([event.tokens async for event in events])


async def _wait(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 30), "the thread never reached its gate"


def test_a_request_that_arrives_during_a_step_gets_its_first_token_before_it_ends(seq2seq):
    gated = Gated(seq2seq)
    gate = gated.close_gate(WORKER, "run_decoder", free_calls=1)  # the worker's second step waits

    async def scenario() -> tuple[list[int], bool, int, int]:
        scheduler = _scheduler(gated, rows=2)
        try:
            a = await scheduler.submit(_request(seq2seq, 0))
            await anext(a)  # the worker started it alone (nothing ran) and decoded its first token
            await _wait(gated.inside[WORKER])  # the worker is inside its next step
            b = await scheduler.submit(_request(seq2seq, 1))
            await asyncio.wait_for(anext(b), 30)  # from the lane, while the worker's step waits
            during_step = gated.inside[WORKER].is_set() and not gate.is_set()
            c = await scheduler.submit(_request(seq2seq, 2))  # a and b fill the two rows
            await asyncio.sleep(0.05)
            queued, running = scheduler.queue_depth, scheduler.running_rows
            gate.set()
            counts = [1 + await _rest(a), 1 + await _rest(b), await _rest(c)]
            return counts, during_step, queued, running
        finally:
            scheduler.close(5.0)
            assert scheduler.running_rows == 0

    counts, during_step, queued, running = asyncio.run(scenario())
    assert during_step, "the first token waited for the step in flight"
    assert (queued, running) == (1, 2), "a row in the lane did not count against --max-batch-rows"
    assert counts == [12, 12, 12]


def test_outputs_through_the_lane_equal_generate_alone(seq2seq):
    requests = [_request(seq2seq, i, tokens=3 + 3 * i, forced=False) for i in range(6)]
    expected = [seq2seq.generate([r.prompt_ids], config=r.config)[0].text for r in requests]

    async def scenario(lane: str) -> tuple[list[str], int]:
        gated = Gated(seq2seq)
        gate = gated.close_gate(WORKER, "run_decoder", free_calls=1)
        scheduler = _scheduler(gated, rows=8, lane=lane)
        try:
            first = await scheduler.submit(requests[0])
            await _wait(gated.inside[WORKER])  # the lane starts the others while the worker's step waits
            streams = [first] + [await scheduler.submit(r) for r in requests[1:]]
            await asyncio.to_thread(lambda: _until(lambda: not scheduler.queue_depth))
            gate.set()
            texts = []
            for stream in streams:
                texts.append("".join([event.text async for event in stream]))
            return texts, scheduler.lane_started
        finally:
            scheduler.close(5.0)

    for lane in ("first-token", "encode"):
        texts, lane_started = asyncio.run(scenario(lane))
        assert texts == expected, lane
        assert lane_started == len(requests) - 1, "the lane did not start the requests that came during a step"


def test_a_request_cancelled_in_the_lane_never_joins(seq2seq):
    gated = Gated(seq2seq)
    lane_gate = gated.close_gate(LANE, "encode")

    async def scenario() -> tuple[int, int]:
        scheduler = _scheduler(gated, rows=4)
        try:
            a = await scheduler.submit(_request(seq2seq, 0, tokens=30))
            await anext(a)  # the worker started it (nothing ran)
            await scheduler.submit(_request(seq2seq, 1))
            await _wait(gated.inside[LANE])  # the second is in the lane, inside its encoder call
            scheduler.cancel("r1")
            lane_gate.set()
            await _rest(a)
            await asyncio.to_thread(lambda: _until(lambda: scheduler.running_rows == 0))
            return scheduler.mid_batch_admissions, scheduler.lane_started
        finally:
            scheduler.close(5.0)

    joined, lane_started = asyncio.run(scenario())
    assert lane_started == 1 and joined == 0, "a request cancelled in the lane joined the running batch"


def test_close_lets_a_request_in_the_lane_finish_within_the_grace(seq2seq):
    gated = Gated(seq2seq)
    lane_gate = gated.close_gate(LANE, "encode")

    async def scenario() -> tuple[int, int, bool]:
        scheduler = _scheduler(gated, rows=4)
        a = await scheduler.submit(_request(seq2seq, 0, tokens=20))
        await anext(a)
        b = await scheduler.submit(_request(seq2seq, 1))
        await _wait(gated.inside[LANE])  # b waits in the lane while the server shuts down
        threading.Timer(0.3, lane_gate.set).start()
        await asyncio.to_thread(scheduler.close, 5.0)  # a and b finish within the grace
        tokens = (1 + await _rest(a), await _rest(b))
        stopped = not scheduler._lane_thread.is_alive() and not scheduler._thread.is_alive()
        return tokens, stopped and scheduler.running_rows == 0

    tokens, stopped = asyncio.run(scenario())
    assert tokens == (20, 12), "a request in the lane at shutdown did not finish within the grace"
    assert stopped, "the lane or the worker outlived close(), or rows leaked"


def test_close_refuses_new_requests_and_fails_those_left_after_the_grace(seq2seq):
    gated = Gated(seq2seq)
    lane_gate = gated.close_gate(LANE, "encode")

    async def scenario() -> BaseException | None:
        scheduler = _scheduler(gated, rows=4)
        a = await scheduler.submit(_request(seq2seq, 0, tokens=30))
        await anext(a)
        b = await scheduler.submit(_request(seq2seq, 1))
        await _wait(gated.inside[LANE])
        await asyncio.to_thread(scheduler.close, 0.2)  # the lane is stuck past the grace
        try:
            await _rest(b)
        except ShuttingDown as exc:
            error = exc
        else:
            error = None
        lane_gate.set()
        await asyncio.to_thread(lambda: _until(lambda: not scheduler._lane_thread.is_alive()))
        await asyncio.to_thread(lambda: _until(lambda: not scheduler._thread.is_alive()))
        assert scheduler.running_rows == 0
        with pytest.raises(ShuttingDown, match="shutting down"):
            await scheduler.submit(_request(seq2seq, 2))
        return error

    error = asyncio.run(scenario())
    assert isinstance(error, ShuttingDown), "a request left in the lane after the grace was not failed"


def _until(condition, timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met in time")


def test_lane_choices_and_the_engine_process_without_a_lane(seq2seq):
    from seqport.engine.errors import ConfigError
    from seqport.serving.jobs import Outbox

    with pytest.raises(ConfigError, match="prefill lane must be one of first-token, encode, off"):
        ContinuousScheduler(seq2seq, SchedulerLimits(), lane="both")
    outbox = Outbox()  # a given outbox (the engine process's pipe): the worker admits, no lane thread
    scheduler = ContinuousScheduler(seq2seq, SchedulerLimits(), outbox=outbox)
    try:
        assert scheduler.lane == "off" and not scheduler._lane_thread.is_alive()
    finally:
        scheduler.close(5.0)


def test_beam_search_that_arrives_during_a_step_is_decoded_alone_by_the_worker(seq2seq):
    gated = Gated(seq2seq)
    gate = gated.close_gate(WORKER, "run_decoder", free_calls=1)
    config = seq2seq.default_config.replace(max_new_tokens=6, do_sample=False, num_beams=2)
    beams = GenerationRequest("beams", seq2seq.input_ids([SOURCES[3]])[0], config)
    expected = seq2seq.generate([beams.prompt_ids], config=config)[0].text

    async def scenario() -> tuple[str, int]:
        scheduler = _scheduler(gated, rows=4)
        try:
            a = await scheduler.submit(_request(seq2seq, 0))
            await _wait(gated.inside[WORKER])
            stream = await scheduler.submit(beams)  # the lane hands it to the worker
            await asyncio.to_thread(lambda: _until(lambda: scheduler.lane_started == 1))
            gate.set()
            text = "".join([event.text async for event in stream])
            await _rest(a)
            return text, scheduler.lane_started
        finally:
            scheduler.close(5.0)

    text, lane_started = asyncio.run(scenario())
    assert lane_started == 1 and text == expected


class _Recording:
    """A runtime that records the thread of every call, then makes it."""

    def __init__(self, runtime) -> None:
        self._runtime, self.threads = runtime, []

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def run(self, feeds, into=None):
        self.threads.append(threading.current_thread().name)
        return self._runtime.run(feeds, into=into) if into else self._runtime.run(feeds)


@pytest.mark.skipif(step_priority.unavailable() is not None, reason="no SCHED_IDLE here")
def test_idle_priority_steps_decode_what_generate_alone_does(fresh_export, monkeypatch):
    model = sp.load(fresh_export[1])
    requests = [_request(model, i, tokens=6 + 3 * i, forced=i < 2) for i in range(6)]  # 0 and 1 overlap
    expected = [model.generate([r.prompt_ids], config=r.config)[0].text for r in requests]
    decoder = _Recording(model.runtimes["decoder"])
    monkeypatch.setitem(model.runtimes, "decoder", decoder)

    async def scenario() -> list[str]:
        scheduler = ContinuousScheduler(model, SchedulerLimits(max_batch_rows=8), step_priority="idle")
        scheduler.LANE_MIN_STEP_S = 0.0  # every step of two rows or more goes to the idle thread
        assert scheduler.idle_steps
        # a deadline no step misses here: beside a busy test process of the same session (CI's
        # -n 2) the default 50 ms can pass, and the guard then rightly keeps the steps in the worker
        scheduler._idle_steps.min_deadline_s = 60.0
        try:
            streams = []
            for request in requests:  # two at once, then the others join the batch as it steps
                streams.append(await scheduler.submit(request))
                if len(streams) > 1:
                    await asyncio.sleep(0.002)
            texts = []
            for stream in streams:
                texts.append("".join([event.text async for event in stream]))
            return texts
        finally:
            scheduler.close(5.0)

    assert asyncio.run(scenario()) == expected
    assert decoder.threads.count("seqport-idle-step") >= 5, "the steps of two rows or more ran in the worker"


def test_step_priority_is_checked(seq2seq):
    with pytest.raises(ConfigError, match="step priority must be one of normal, idle"):
        ContinuousScheduler(seq2seq, SchedulerLimits(max_batch_rows=2), step_priority="low")
    scheduler = ContinuousScheduler(seq2seq, SchedulerLimits(max_batch_rows=2))
    try:
        assert not scheduler.idle_steps  # "normal" by default: the worker makes its calls
    finally:
        scheduler.close(1.0)


@pytest.mark.skipif(step_priority.unavailable() is not None, reason="no SCHED_IDLE here")
def test_a_starved_idle_step_is_made_by_the_worker_and_counted(fresh_export, monkeypatch):
    model = sp.load(fresh_export[1])
    requests = [_request(model, i, tokens=8, forced=True) for i in range(3)]
    expected = [model.generate([r.prompt_ids], config=r.config)[0].text for r in requests]
    release = threading.Event()

    class StarvedOnce(_Recording):
        def run(self, feeds, into=None):  # the idle thread's first call stalls, as if starved
            if threading.current_thread().name == "seqport-idle-step" and not self.threads:
                self.threads.append("stalled")
                assert release.wait(30)
            return super().run(feeds, into)

    decoder = StarvedOnce(model.runtimes["decoder"])
    monkeypatch.setitem(model.runtimes, "decoder", decoder)
    missed = []

    async def scenario() -> list[str]:
        scheduler = ContinuousScheduler(
            model, SchedulerLimits(max_batch_rows=4), step_priority="idle", on_step_missed=lambda: missed.append(1)
        )
        scheduler.LANE_MIN_STEP_S = 0.0
        scheduler._idle_steps.min_deadline_s, scheduler._idle_steps.deadline_steps = 0.05, 0.0
        try:
            streams = [await scheduler.submit(request) for request in requests]
            texts = []
            for stream in streams:
                texts.append("".join([event.text async for event in stream]))
            return texts
        finally:
            release.set()  # the abandoned call ends; its outputs are dropped
            scheduler.close(5.0)

    assert asyncio.run(scenario()) == expected
    assert missed == [1], "the missed deadline was not counted once (the back-off keeps the rest in the worker)"
