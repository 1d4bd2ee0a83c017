"""The engine in a process of its own (`seqport serve --engine-process`).

The HTTP event loop stays in the server's process; the scheduler (continuous or micro-batching,
the same classes as in a worker thread) and the model run in a child process started with
`spawn`, so the worker never waits for the GIL that the event loop holds while it writes SSE
chunks. One pipe joins them:

- parent → child: ("submit", GenerationRequest), ("cancel", request_id), ("taken", count) after
  the event loop took that many step messages (pacing, PipeOutbox), ("close", grace_s);
- child → parent: ("ready", description) once the model is loaded (or ("error", exception)),
  then one ("step", items, batch_rows, admitted) per decoder step carrying every row's new
  events (request_id, TokenEvent | None | exception, stamps) — not one message per token —,
  and ("closed",) after a close.

Prompts are tokenized and checked in the parent (the HTTP layer does it before it submits);
the parent also loads the artifact (for the tokenizer, the manifest and the chat template;
its sessions stay idle). An error the child raises for a request (a SeqportError) reaches
the request as it would from a worker thread, so it answers 400/429/503 alike. The child dies
with the parent: its main thread reads the pipe, and the parent's end closing ends it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

from seqport.engine.runtime import RuntimeOptions
from seqport.serving.jobs import GenerationRequest, Job, TokenEvent, deliver
from seqport.serving.scheduler import MicroBatchScheduler, SchedulerLimits, ShuttingDown
from seqport.serving.threads import server_runtime

logger = logging.getLogger(__name__)


class ProcessScheduler:
    """The `Scheduler` interface over a scheduler that runs in a child process (module doc).

    Args:
        model: the loaded model (this process: sizes and tokenizer; the child loads `model.folder`).
        limits: admission limits.
        kind: "continuous" or "micro" (make_scheduler's `kind`, in the child).
        runtime: the child's runtime options (threads, provider, spinning); None: the server's
            (serving/threads.py, server_runtime()).
        on_batch, on_admit: metrics callbacks, as make_scheduler's.

    Raises:
        SeqportError: the child could not load the artifact or make the scheduler (its error).
    """

    START_TIMEOUT_S = 600.0

    def __init__(
        self,
        model: Any,
        limits: SchedulerLimits,
        kind: str = "continuous",
        runtime: RuntimeOptions | None = None,
        on_batch: Any = None,
        on_admit: Any = None,
    ) -> None:
        self.model, self.limits = model, limits
        self._on_batch, self._on_admit = on_batch, on_admit
        self._jobs: dict[str, Job] = {}
        self._started: set[str] = set()  # requests that got an item: running, not waiting
        self._closing = False
        self._send_lock = threading.Lock()
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        runtime = runtime or server_runtime()
        args = (child, str(model.folder), runtime, limits, kind)
        self._process = context.Process(target=engine_main, args=args, name="seqport-engine", daemon=True)
        self._process.start()
        child.close()  # only the child holds its end: the parent's end sees EOF when the child dies
        self._ready()
        self._loop: asyncio.AbstractEventLoop | None = None  # reads the pipe (add_reader) from the first submit on
        self._closed = threading.Event()

    def _ready(self) -> None:
        if not self._conn.poll(self.START_TIMEOUT_S):
            self._process.kill()
            raise ShuttingDown(f"the engine process did not start in {self.START_TIMEOUT_S:.0f} s")
        message = self._conn.recv()
        if message[0] == "error":
            self._process.join(5)
            raise message[1]
        logger.info("engine process %d: %s", self._process.pid, message[1])

    @property
    def pid(self) -> int | None:
        """The engine process's id."""
        return self._process.pid

    @property
    def queue_depth(self) -> int:
        return sum(1 for request_id in list(self._jobs) if request_id not in self._started)

    @property
    def running_rows(self) -> int:
        jobs = list(self._jobs.items())
        return sum(job.request.rows for request_id, job in jobs if request_id in self._started and job.live)

    # The size checks and the event iterator are MicroBatchScheduler's (they read only model,
    # limits and cancel): the limits are checked here, before a message goes to the child.
    async def submit(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        job = Job(request, asyncio.get_running_loop(), asyncio.Queue(), MicroBatchScheduler.kv_bytes(self, request))
        MicroBatchScheduler._check_size(self, job)
        if self._closing or not self._process.is_alive():
            raise ShuttingDown("the server is shutting down; retry on another instance")
        self._watch(job.loop)
        self._jobs[request.request_id] = job
        job.stamp("submitted")
        self._send(("submit", request))
        return MicroBatchScheduler._events(self, job)

    def cancel(self, request_id: str) -> None:
        job = self._jobs.pop(request_id, None)
        self._started.discard(request_id)
        if job is not None:
            job.cancelled = True
            self._send(("cancel", request_id))

    def close(self, grace_s: float = 5.0) -> None:
        """The child closes its scheduler (the same grace), then exits; killed if it does not."""
        self._closing = True
        self._send(("close", grace_s))
        if self._loop is not None and not self._loop.is_closed():
            self._closed.wait(2 * grace_s + 5)  # the loop reads the last events and "closed"
        self._process.join(2 * grace_s + 5)
        if self._process.is_alive():
            logger.warning("the engine process %d did not exit; killing it", self._process.pid)
            self._process.kill()
            self._process.join(5)
        self._fail_open("the server shut down while this request ran")

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except (OSError, ValueError):  # the child is gone: the reader fails what is open
            pass

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop reads the pipe itself when it is readable: no reader thread to take
        the GIL from it, and the events go into their queues without another hand-off."""
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.remove_reader, self._conn.fileno())
        self._loop = loop
        loop.add_reader(self._conn.fileno(), self._read)

    def _read(self) -> None:
        """On the event loop, the pipe readable: every waiting message's events into their queues."""
        try:
            taken = 0
            while self._conn.poll(0):
                message = self._conn.recv()
                if message[0] == "closed":
                    return self._stop_reading()
                _, items, batches, admitted = message
                for rows in batches:
                    if self._on_batch is not None:
                        self._on_batch(rows)
                if admitted and self._on_admit is not None:
                    self._on_admit(admitted)
                self._dispatch(items)
                taken += 1
            if taken:
                self._send(("taken", taken))  # the worker may send its next step (PipeOutbox pacing)
        except (EOFError, OSError):
            if not self._closing:
                logger.error("the engine process %d exited (code %s)", self._process.pid, self._process.exitcode)
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
        self._fail_open("the engine process exited; restart the server")
        self._closed.set()

    def _dispatch(self, items: list[tuple[str, Any, dict | None]]) -> None:
        for request_id, item, stamps in items:
            job = self._jobs.get(request_id)
            if job is None:
                continue  # cancelled meanwhile
            self._started.add(request_id)
            if stamps and job.request.stamps is not None:
                job.request.stamps.update({k: v for k, v in stamps.items() if k not in job.request.stamps})
            if item is None or isinstance(item, BaseException):
                self._jobs.pop(request_id, None)
                self._started.discard(request_id)
            if job.loop is self._loop:
                deliver([(job, item)])
            else:  # a job of another event loop than the one reading (tests that run several)
                try:
                    job.loop.call_soon_threadsafe(deliver, [(job, item)])
                except RuntimeError:  # that event loop closed: nobody is listening
                    pass

    def _fail_open(self, message: str) -> None:
        jobs, self._jobs = self._jobs, {}
        for job in jobs.values():
            if job.loop is not None and not job.done:
                job.done = True
                try:
                    job.loop.call_soon_threadsafe(job.queue.put_nowait, ShuttingDown(message))
                except RuntimeError:
                    pass


class PipeOutbox:
    """In the engine process: the worker's events of one step go to the parent in one message.

    Thread-safe: the worker adds and flushes; the main thread posts failures (a full queue,
    shutdown) with add + flush too. Counts the batches and admissions for the parent's metrics.

    Pacing, as the worker thread's Outbox: the worker's flush waits until the parent's event
    loop has taken the step message before (it answers each with "taken", which the main
    thread passes to `taken`), so the worker runs at most one step ahead of the loop. Without
    it the worker outran a busy loop, step messages queued in the pipe, and a new request's
    first token waited behind all of them. The main thread never waits: it is the one that
    reads the "taken" answers.
    """

    PACE_TIMEOUT_S = 1.0  # a parent that stopped reading does not block the worker for good

    def __init__(self, conn: Any) -> None:
        self._conn, self._lock = conn, threading.Lock()
        self._items: list[tuple[str, Any, dict | None]] = []
        self._batches: list[int] = []
        self._admitted = 0
        self._untaken = 0  # step messages sent that the parent has not taken yet
        self._taken = threading.Condition()
        self._main = threading.get_ident()  # made by the main thread, which must never wait

    def add(self, job: Job, item: object) -> None:
        stamps = None
        if not job.stamps_sent:
            job.stamps_sent, stamps = True, job.request.stamps
        with self._lock:
            self._items.append((job.request.request_id, _picklable(item), stamps))

    def batch(self, rows: int) -> None:
        with self._lock:
            self._batches.append(rows)

    def admitted(self, count: int) -> None:
        with self._lock:
            self._admitted += count

    def taken(self, count: int) -> None:
        """(Main thread.) The parent took `count` step messages."""
        with self._taken:
            self._untaken = max(self._untaken - count, 0)
            self._taken.notify_all()

    def flush(self) -> None:
        with self._lock:
            if not self._items and not self._batches:
                return
            message = ("step", self._items, self._batches, self._admitted)
            self._items, self._batches, self._admitted = [], [], 0
        with self._taken:
            if threading.get_ident() != self._main:
                self._taken.wait_for(lambda: self._untaken == 0, self.PACE_TIMEOUT_S)
            self._untaken += 1
        with self._lock:  # one message at a time on the pipe
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the parent is gone
                os._exit(0)

    def close(self, timeout: float = 5.0) -> None:
        self.flush()


def _picklable(item: object) -> object:
    """An exception that does not pickle becomes a RuntimeError with its message."""
    if isinstance(item, BaseException):
        try:
            pickle.dumps(item)
        except Exception:
            return RuntimeError(f"{type(item).__name__}: {item}")
    return item


def engine_main(conn: Any, folder: str, runtime: RuntimeOptions, limits: SchedulerLimits, kind: str) -> None:
    """The engine process: load the artifact, run the scheduler, serve the pipe until closed."""
    from seqport.engine.api import load
    from seqport.serving.scheduler_choice import make_scheduler

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent shuts down gracefully
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     [engine] %(message)s")
    outbox = PipeOutbox(conn)
    try:
        model = load(folder, options=runtime)
        scheduler = make_scheduler(model, limits, kind, on_batch=outbox.batch, on_admit=outbox.admitted, outbox=outbox)
    except Exception as exc:
        conn.send(("error", _picklable(exc)))
        return
    described = "continuous batching" if type(scheduler).__name__ == "ContinuousScheduler" else "static micro-batching"
    conn.send(("ready", f"{described} (up to {limits.max_batch_rows} rows)"))
    _serve(conn, scheduler, outbox)


def _serve(conn: Any, scheduler: Any, outbox: PipeOutbox) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone: the engine dies with it
        if message[0] == "submit":
            request = message[1]
            job = Job(request, None, None, scheduler.kv_bytes(request), outbox=outbox)
            try:
                scheduler.enqueue(job)
            except Exception as exc:  # QueueFull, ShuttingDown, ConfigError: that request's answer
                job.fail(exc)
        elif message[0] == "taken":
            outbox.taken(message[1])
        elif message[0] == "cancel":
            scheduler.cancel(message[1])
        elif message[0] == "close":
            scheduler.close(message[1])
            outbox.flush()
            conn.send(("closed",))
            return
