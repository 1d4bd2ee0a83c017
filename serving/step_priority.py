"""The running batch's decoder call at idle CPU priority, so that first tokens go first.

Why: under load every core is busy. The worker steps the running batch, the prefill lane
encodes new requests, the event loop writes SSE chunks, and on a small machine the clients run
there too. A new request's first token then waits for CPU that the step of the other rows
holds. On the bundled translator at 16 clients this made the loaded first token ~2.6× the
idle one. `seqport serve --step-priority idle` (off by default) turns this module on.

`IdleStepRunner` runs the decoder call on a thread of its own at Linux's `SCHED_IDLE`: every
other runnable thread of the server's scheduling group goes first. That group is its
session's autogroup, or its cgroup in a container or a systemd service. The step uses the CPU
that is left over. Processes of other groups are not affected by this.

The guard: a thread at `SCHED_IDLE` runs only when nothing else of its group wants the CPU,
and an unprivileged thread cannot raise its priority again. So a call that has not finished
by its deadline is abandoned and made again in the caller, at normal priority. A growing
cache's call writes nothing it does not return, so its late outputs are simply dropped. The
caller then makes its calls itself for a back-off, which doubles (1 s up to 60 s) while calls
keep missing their deadline.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

STEP_PRIORITIES = ("normal", "idle")


@functools.cache
def unavailable() -> str | None:
    """Why decoder calls cannot run at idle priority here, or None when they can."""
    if not sys.platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"):
        return "SCHED_IDLE is Linux's"
    return None


class _Call:
    """One call handed to the idle thread, and its outcome."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.cpu_s = 0.0  # the idle thread's CPU time in the call


class IdleStepRunner:
    """Makes calls on a thread at SCHED_IDLE priority, and in the caller past their deadline.

    Args:
        min_deadline_s: a call's shortest deadline.
        deadline_steps: a call's deadline is this many times the CPU time the idle thread's
            calls take (smoothed; a starved call's waiting does not stretch it), at least
            `min_deadline_s`.
        backoff_s, max_backoff_s: after a missed deadline the caller makes its calls itself
            for `backoff_s`, doubled at each further miss up to `max_backoff_s`. A call that
            makes its deadline sets it back to `backoff_s`.
        clock: monotonic seconds (tests pass their own).
        on_missed: called (in the caller) for every call that missed its deadline.
    """

    def __init__(
        self,
        min_deadline_s: float = 0.05,
        deadline_steps: float = 20.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_missed: Callable[[], None] | None = None,
    ) -> None:
        self.min_deadline_s, self.deadline_steps = min_deadline_s, deadline_steps
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._clock, self._on_missed = clock, on_missed
        self._backoff = backoff_s
        self._cpu_s = 0.0  # the idle thread's CPU time per call, smoothed (0: none made yet)
        self._inline_until = float("-inf")
        self.missed = 0  # calls abandoned at their deadline and made in the caller
        self._cond = threading.Condition()
        self._pending: _Call | None = None  # handed over, not finished (an abandoned one too)
        self._closed = False
        self.refused = ""  # why the idle thread could not lower its priority ("": it did)
        self._thread: threading.Thread | None = None

    def run(self, call: Callable[[], T], expected_s: float) -> T:
        """`call()`'s result, made at idle priority where that can be done in time.

        Args:
            call: no arguments; it must be safe to make again while an abandoned copy still runs.
            expected_s: how long the call usually takes: its deadline until the idle thread has
                made calls of its own to time.
        """
        handed = self._hand_over(call)
        if handed is None:
            return call()
        if handed.done.wait(max(self.min_deadline_s, self.deadline_steps * (self._cpu_s or expected_s))):
            self._backoff = self.backoff_s
            self._cpu_s = handed.cpu_s if not self._cpu_s else self._cpu_s + 0.2 * (handed.cpu_s - self._cpu_s)
            if handed.error is not None:
                raise handed.error
            return handed.value
        self._missed()
        return call()

    def close(self) -> None:
        """Stop the idle thread once its call (if any) returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _hand_over(self, call: Callable[[], Any]) -> _Call | None:
        """The call as handed to the idle thread; None: the caller makes it (backing off, the
        idle thread still busy with an abandoned call, closed, or no SCHED_IDLE here)."""
        if unavailable() is not None or self.refused or self._clock() < self._inline_until:
            return None
        with self._cond:
            if self._closed or self._pending is not None:
                return None
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="seqport-idle-step", daemon=True)
                self._thread.start()
            self._pending = _Call(call)
            self._cond.notify_all()
            return self._pending

    def _missed(self) -> None:
        self.missed += 1
        self._inline_until = self._clock() + self._backoff
        logger.warning(
            "a decoder call at idle priority missed its deadline (other work of this process group "
            "holds the cores); the worker steps at normal priority for %.0f s",
            self._backoff,
        )
        self._backoff = min(2 * self._backoff, self.max_backoff_s)
        if self._on_missed is not None:
            self._on_missed()

    def _serve(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
        except OSError as exc:  # a sandbox that forbids it: the caller makes its calls from now on
            self.refused = f"sched_setscheduler(SCHED_IDLE) failed: {exc}"
            logger.warning("decoder calls stay at normal priority: %s", self.refused)
        while True:
            with self._cond:
                while self._pending is None:
                    if self._closed:
                        return
                    self._cond.wait()
                handed = self._pending
            start = time.thread_time()
            try:
                handed.value = handed.call()
            except BaseException as exc:  # raised in the caller that waits for it
                handed.error = exc
            handed.cpu_s = time.thread_time() - start
            with self._cond:
                handed.done.set()
                self._pending = None
