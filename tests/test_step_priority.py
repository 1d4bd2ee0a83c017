"""serving/step_priority.py: decoder calls on a thread at SCHED_IDLE, made in the caller once
they miss their deadline (then backing off), errors passed on, a refused priority tolerated.
Deterministic: the idle thread's calls wait at events, and the back-off reads a test clock."""

from __future__ import annotations

import os
import threading

import pytest

from seqport.serving import step_priority
from seqport.serving.step_priority import IdleStepRunner

needs_sched_idle = pytest.mark.skipif(step_priority.unavailable() is not None, reason="no SCHED_IDLE here")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _where() -> tuple[str, int]:
    return threading.current_thread().name, os.sched_getscheduler(0)


def _stuck_on_the_idle_thread(gate: threading.Event):
    """A call that, on the idle thread, waits at `gate` (as if starved) and returns "late";
    in the caller it returns "on time" at once."""

    def call() -> str:
        if threading.current_thread().name == "seqport-idle-step":
            assert gate.wait(30)
            return "late"
        return "on time"

    return call


@pytest.fixture
def runner():
    """IdleStepRunner(**kwargs), closed after the test. Its deadline is 30 s unless a test sets
    `min_deadline_s`: beside a busy test process of the same session (CI's -n 2) an idle thread may
    wait longer than the default 50 ms, and a test's call would then be made in the caller."""
    made = []

    def make(**kwargs) -> IdleStepRunner:
        made.append(IdleStepRunner(**{"min_deadline_s": 30.0, **kwargs}))
        return made[-1]

    yield make
    for each in made:
        each.close()


@needs_sched_idle
def test_calls_run_on_a_thread_at_idle_priority(runner):
    idle = runner()
    assert idle.run(_where, 0.001) == ("seqport-idle-step", os.SCHED_IDLE)
    assert idle.run(lambda: 41 + 1, 0.001) == 42  # the same thread serves the next call
    assert _where() == (threading.current_thread().name, os.SCHED_OTHER)  # the caller's priority is untouched
    assert idle.missed == 0


@needs_sched_idle
def test_an_error_reaches_the_caller(runner):
    def broken():
        raise ValueError("bad feed")

    idle = runner()
    with pytest.raises(ValueError, match="bad feed"):
        idle.run(broken, 0.001)
    assert idle.run(_where, 0.001)[0] == "seqport-idle-step"  # the thread outlives it


@needs_sched_idle
def test_a_call_past_its_deadline_is_made_in_the_caller_and_backs_off(runner):
    clock, gate = Clock(), threading.Event()
    idle = runner(deadline_steps=1.0, backoff_s=1.0, max_backoff_s=3.0, clock=clock)
    stuck_on_the_idle_thread = _stuck_on_the_idle_thread(gate)
    caller = threading.current_thread().name
    idle.min_deadline_s = 0.05  # for the stuck calls; the others keep 30 s
    assert idle.run(stuck_on_the_idle_thread, 0.001) == "on time"  # waited 50 ms, then made it itself
    idle.min_deadline_s = 30.0
    assert idle.missed == 1
    clock.now = 0.5  # backing off: the caller makes its calls
    assert idle.run(_where, 0.001)[0] == caller
    clock.now = 1.5  # back-off over, but the idle thread still runs the abandoned call
    assert idle.run(_where, 0.001)[0] == caller
    gate.set()
    assert _eventually(lambda: idle.run(_where, 0.001)[0] == "seqport-idle-step")
    assert idle.missed == 1, "the late result of the abandoned call was taken for a new one"

    gate.clear()
    clock.now = 10.0  # a call made its deadline since: the next miss backs off 1 s again, not 2
    idle.min_deadline_s = 0.05
    assert idle.run(stuck_on_the_idle_thread, 0.001) == "on time"
    idle.min_deadline_s = 30.0
    assert idle.missed == 2
    gate.set()
    assert _eventually(lambda: idle._pending is None)
    clock.now = 10.9
    assert idle.run(_where, 0.001)[0] == caller
    clock.now = 11.0
    assert idle.run(_where, 0.001)[0] == "seqport-idle-step"


@needs_sched_idle
def test_the_back_off_doubles_while_calls_keep_missing(runner):
    clock, gate = Clock(), threading.Event()
    idle = runner(min_deadline_s=0.02, deadline_steps=1.0, backoff_s=1.0, max_backoff_s=3.0, clock=clock)
    stuck = _stuck_on_the_idle_thread(gate)  # every call handed over misses: only the clock decides
    misses_at = []
    for step in range(40):  # 40 calls at 0.25 s apart
        clock.now = step * 0.25
        before = idle.missed
        idle.run(stuck, 0.001)
        if idle.missed != before:
            misses_at.append(clock.now)
            gate.set()  # the abandoned call ends, so the next try may reach the idle thread
            assert _eventually(lambda: idle._pending is None)
            gate.clear()
    gate.set()
    gaps = [b - a for a, b in zip(misses_at, misses_at[1:])]
    assert gaps[:3] == [1.0, 2.0, 3.0], misses_at  # 1 s, 2 s, then capped at 3 s
    assert all(gap == 3.0 for gap in gaps[3:]), misses_at


def test_a_refused_priority_leaves_the_calls_in_the_caller(runner, monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(step_priority, "unavailable", lambda: None)
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    idle = runner()
    assert idle.run(lambda: 7, 0.001) == 7  # the first call was handed over and made, at normal priority
    assert "Operation not permitted" in idle.refused
    assert idle.run(_where, 0.001)[0] == threading.current_thread().name
    assert idle.missed == 0


def test_without_sched_idle_the_caller_makes_every_call(runner, monkeypatch):
    monkeypatch.setattr(step_priority, "unavailable", lambda: "SCHED_IDLE is Linux's")
    idle = runner()
    assert idle.run(_where, 0.001)[0] == threading.current_thread().name
    assert idle._thread is None


@needs_sched_idle
def test_close_stops_the_idle_thread(runner):
    idle = runner()
    idle.run(lambda: None, 0.001)
    thread = idle._thread
    idle.close()
    thread.join(5)
    assert not thread.is_alive()
    assert idle.run(_where, 0.001)[0] == threading.current_thread().name  # closed: made in the caller


def _eventually(condition, seconds: float = 10.0) -> bool:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return False
