"""Continuous (iteration-level) batching (Orca, OSDI 2022), decoder-only and encoder-decoder.

One worker thread holds the running batch (engine/running_batch.py). Between two decoder
steps it drops finished and cancelled rows, admits waiting requests (prefilled together, as a
static batch of them would be; their cache rows merged into the running cache), then runs one
step for every row. Each row chooses its tokens as `model.generate([prompt])` would
(serving/rows.py: one argmax for the plain greedy rows of a step, an engine search of its own for
a row with processors or sampling; a seeded row samples from the generator input 0 of that call
would use). Beam search and n > 1 run as a static batch of their own (the micro-batch path)
between two steps.

While the running batch's steps are long, a prefill lane (a thread of its own) starts requests
as they arrive, during the worker's step (onnxruntime releases the GIL): it takes them while
the row limit and the KV budget allow (its rows count as running), prefills them together
(serving/prefill.py: prompts left-padded through the decoder; sources through the encoder,
then a decoder call of their own with lane "first-token", or their decoder start joins the
worker's next step with "encode") and streams their first tokens at once; the worker merges the
ready rows between two steps. Otherwise (nothing runs, short steps, or lane "off") the worker
starts them itself. Encoder-decoder rows carry their cross K/V and encoder mask (source axis
right-padded), and the decoder takes per-row position_ids and a self-attention attention_mask
(Seq2SeqModel.row_positions). Artifacts whose rows cannot be merged are served by `MicroBatchScheduler`
(serving/scheduler_choice.py picks and logs which).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import numpy as np

from seqport.engine.errors import ConfigError
from seqport.engine.running_batch import RunningBatch
from seqport.serving.batching import run_batch
from seqport.serving.jobs import DirectOutbox, GenerationRequest, Job
from seqport.serving.prefill import Handoff, Prefiller, fail, merge
from seqport.serving.rows import Row, advance
from seqport.serving.scheduler import MicroBatchScheduler, SchedulerLimits
from seqport.serving.step_priority import STEP_PRIORITIES, IdleStepRunner, unavailable

logger = logging.getLogger(__name__)

PREFILL_LANES = ("first-token", "encode", "off")
DEFAULT_LANE = "first-token"


def _on_cpu(model: Any) -> bool:
    """Whether the decoder runs on onnxruntime's CPU provider (where its call holds a core)."""
    providers = getattr(model.runtimes.get("decoder"), "providers", ["CPUExecutionProvider"])
    return list(providers)[:1] == ["CPUExecutionProvider"]


def _alone(request: GenerationRequest) -> bool:
    """Beam search and n > 1 decode as a static batch of their own; every other request is one
    row (a seeded sample too: its row has its own generator, seeded as input 0)."""
    return request.config.num_beams > 1 or request.config.num_return_sequences > 1


class ContinuousScheduler(MicroBatchScheduler):
    """Iteration-level batching behind the `Scheduler` interface (see the module docstring).

    Queue, cancel and the size checks are MicroBatchScheduler's; the worker and the lane differ.

    Args:
        model: a loaded generating model that `continuous_unsupported` accepts.
        limits: max_batch_rows bounds the running rows (rows in the prefill lane count);
            kv_budget_bytes bounds the padded worst case, rows × the longest request's prompt +
            max_tokens (batch_wait_s unused).
        on_batch: called with the row count of every step (the batch-size histogram).
        on_admit: called with the number of requests that joined a batch already running.
        on_lane: called with the number of requests the prefill lane started (from its thread).
        outbox: as MicroBatchScheduler's. A given outbox (the engine process's pipe) keeps the
            admissions in the worker thread: no prefill lane.
        lane: "first-token" (the lane prefills, an encoder-decoder row's first token from a
            decoder call of its own), "encode" (the lane prefills; an encoder-decoder row's
            decoder start joins the batch's next step) or "off" (the worker admits between two
            steps): PREFILL_LANES.
        step_priority: "normal" (the worker makes the decoder call) or "idle" (while the
            batch's steps take LANE_MIN_STEP_S or more and it has two rows or more, the call
            runs on a thread at SCHED_IDLE, so that the lane, the event loop and the rest of the
            process's group go first: earlier first tokens, fewer requests/s;
            serving/step_priority.py).
            Linux and the CPU provider only, not with a given outbox; elsewhere "idle" runs as
            "normal".
        on_step_missed: called when an idle-priority decoder call missed its deadline and the
            worker made it itself (from the worker's thread).

    The lane takes waiting requests only while rows run and the running batch's decoder call
    takes LANE_MIN_STEP_S or more (smoothed over the last steps): then a new request would
    wait for the step in flight. Otherwise (nothing runs, or steps shorter than the lane's own
    hand-overs cost, as the tiny GPT-2's ~0.1 ms) the worker starts them itself between two
    steps, as with the lane off.

    Raises:
        ConfigError: `lane` is not one of PREFILL_LANES, or `step_priority` not one of
            STEP_PRIORITIES.
    """

    LANE_MIN_STEP_S = 0.001

    def __init__(
        self,
        model: Any,
        limits: SchedulerLimits,
        on_batch: Any = None,
        on_admit: Any = None,
        outbox: Any = None,
        lane: str = DEFAULT_LANE,
        on_lane: Any = None,
        step_priority: str = "normal",
        on_step_missed: Any = None,
    ) -> None:
        if lane not in PREFILL_LANES:
            raise ConfigError(f"prefill lane must be one of {', '.join(PREFILL_LANES)}, got {lane!r}")
        if step_priority not in STEP_PRIORITIES:
            raise ConfigError(f"step priority must be one of {', '.join(STEP_PRIORITIES)}, got {step_priority!r}")
        self._on_admit, self._on_lane = on_admit, on_lane
        self.mid_batch_admissions = 0
        self.placed_in_slots = 0  # rows written into a vacated slot (no copy of the running cache)
        self.lane_started = 0  # requests the prefill lane started (the others: the worker)
        self.lane = lane if outbox is None else "off"
        self._prefiller = Prefiller(model, own_call=self.lane == "first-token")  # the lane's
        self._worker_prefiller = Prefiller(model)  # new rows' decoder start joins the step that follows
        self._geometry = self._prefiller.geometry
        self._lane_takes = False  # whether the lane starts waiting requests now (else the worker)
        self._step_s = 0.0  # the running batch's decoder call, smoothed (seconds)
        self._in_lane: list[Job] = []  # taken by the lane, not yet merged (they count as running)
        self._ready: list[Handoff] = []  # started by the lane, waiting for the worker
        self._slots = 0  # the running batch's slots, vacated ones included
        self._lane_outbox = DirectOutbox()
        idle = step_priority == "idle" and outbox is None and unavailable() is None and _on_cpu(model)
        self._idle_steps = IdleStepRunner(on_missed=on_step_missed) if idle else None
        lock = threading.RLock()
        worker_cond = threading.Condition(lock)  # the worker waits here (MicroBatchScheduler's _cond)
        self._lane_cond = threading.Condition(lock)  # the lane waits here: waking one never wakes the other
        self._lane_thread = threading.Thread(target=self._lane_work, name="seqport-prefill", daemon=True)
        self._lane_stopped = self.lane == "off"
        super().__init__(model, limits, on_batch, outbox, cond=worker_cond)
        if self.lane != "off":
            self._lane_thread.start()

    def close(self, grace_s: float = 5.0) -> None:
        super().close(grace_s)
        if self._lane_thread.is_alive():
            self._lane_thread.join(grace_s)
        if self._idle_steps is not None:
            self._idle_steps.close()

    @property
    def idle_steps(self) -> bool:
        """Whether long decoder calls run at idle priority (step_priority "idle", where it can)."""
        return self._idle_steps is not None

    def _wake_for(self, job: Job) -> None:
        (self._lane_cond if self._lane_takes else self._cond).notify()

    def _wake_all(self) -> None:
        self._cond.notify_all()
        self._lane_cond.notify_all()

    def _held(self) -> list[Job]:
        with self._cond:
            return [*self._running, *self._in_lane]

    def _work(self) -> None:
        batch, rows = RunningBatch(*self._geometry), []  # rows[i]: slot i's row, None when vacated
        while True:
            batch, rows = self._vacate(batch, rows)
            if not self._admit_next(batch, rows):
                return
            self._outbox.flush()  # the new rows' first tokens go out before the next step
            live = [row for row in rows if row is not None]
            self._running = [row.job for row in live]
            if live:
                try:
                    self._step(batch, rows)
                except Exception as exc:  # the worker outlives a failed step; its rows fail
                    logger.exception("decoder step of %d rows failed", len(live))
                    for row in live:
                        row.job.fail(exc)
                    batch, rows = RunningBatch(*self._geometry), []
                self._outbox.flush()

    def _admit_next(self, batch: RunningBatch, rows: list[Row | None]) -> bool:
        """Between two steps: merge what the lane started, or (no lane) admit waiting requests.
        Waits when nothing runs; False: stop."""
        live = [row for row in rows if row is not None]
        if self.lane == "off":
            self._running = [row.job for row in live]
            jobs = self._admissions(live, len(rows))
            if jobs is not None:
                self._admit(batch, rows, jobs, running=bool(live))
            return jobs is not None
        taken = self._handoffs([row.job for row in live], len(rows))
        if taken is None:
            return False
        handoffs, mine = taken
        if mine:
            handoffs.append(self._started(mine, self._worker_prefiller))
        self._merge_handoffs(batch, rows, handoffs, running=bool(live))
        return True

    def _vacate(self, batch: RunningBatch, rows: list[Row | None]) -> tuple[RunningBatch, list[Row | None]]:
        """Finished and cancelled rows leave their slots free for the next admissions (no copy);
        the batch is compacted (one copy) only once half of its slots are free or it holds more
        slots than --max-batch-rows, and emptied when no row is left."""
        gone = [i for i, row in enumerate(rows) if row is not None and not row.job.live]
        for i in gone:
            rows[i] = None
        live = [i for i, row in enumerate(rows) if row is not None]
        if not live:
            return RunningBatch(*self._geometry), []
        if 2 * len(live) <= len(rows) or len(rows) > self.limits.max_batch_rows:
            batch.keep(np.array(live, dtype=np.int64))
            return batch, [rows[i] for i in live]
        batch.vacate(np.array(gone, dtype=np.int64))
        return batch, rows

    def _admissions(self, rows: list[Row], slots: int) -> list[Job] | None:
        """Waiting jobs that fit now, in arrival order; waits when nothing runs; None: stop.
        `rows`: the running rows; `slots`: the batch's rows, vacated ones included."""
        with self._cond:
            while not rows and not self._waiting:
                if self._closing:
                    return None
                self._cond.wait()
            return self._take_fitting([row.job for row in rows], slots)

    def _take_fitting(self, running: list[Job], slots: int) -> list[Job]:
        """(Under the lock.) Waiting jobs that fit beside `running`, in arrival order, stamped."""
        jobs: list[Job] = []
        while self._waiting and self._fits_running(running, jobs, self._waiting[0], slots):
            jobs.append(self._waiting.popleft())
            jobs[-1].stamp("admitted")
            if _alone(jobs[-1].request):
                break
        return jobs

    def _fits_running(self, running: list[Job], jobs: list[Job], job: Job, slots: int) -> bool:
        running = running + jobs
        if _alone(job.request):
            return True  # decoded on its own between two steps
        if len(running) + 1 > self.limits.max_batch_rows:
            return False
        budget = self.limits.kv_budget_bytes
        worst = max(j.kv_bytes for j in [*running, job])  # left padding: every row as long as the longest
        return not budget or worst * max(len(running) + 1, slots) <= budget  # vacated slots hold memory too

    def _admit(self, batch: RunningBatch, rows: list[Row | None], jobs: list[Job], running: bool) -> None:
        """Start `jobs` in the worker (no lane); their rows go into `rows` (free slots first)."""
        handoff = self._started(jobs, self._worker_prefiller)
        self._merge_handoffs(batch, rows, [handoff], running)

    def _started(self, jobs: list[Job], prefiller: Prefiller) -> Handoff:
        """Prefill `jobs` (one call per group); beams / n > 1 are left for the worker."""
        handoff, starts = Handoff(jobs), []
        for job in jobs:
            try:
                if job.live and _alone(job.request):
                    handoff.alone.append(job)
                elif job.live:
                    starts.append(prefiller.start(job))
            except Exception as exc:  # the request fails, the worker and the running rows go on
                fail([job], exc)
        for group in prefiller.group(starts):
            try:
                prefilled = prefiller.prefill(group)
            except Exception as exc:
                fail([start.job for start in group], exc)
                continue
            if prefilled is not None:
                handoff.prefilled.append(prefilled)
        return handoff

    def _merge_handoffs(
        self, batch: RunningBatch, rows: list[Row | None], handoffs: list[Handoff], running: bool
    ) -> None:
        admitted = 0
        for handoff in handoffs:
            for job in handoff.alone:
                try:
                    run_batch(self.model, [job])  # beams / n > 1: a static batch of its own
                except Exception as exc:
                    fail([job], exc)
            for prefilled in handoff.prefilled:
                for row in prefilled.rows:
                    stamps = row.job.request.stamps
                    if stamps is not None and "first_token" not in stamps:
                        row.job.stamp("joined")  # its first token comes from the step about to run
                self.placed_in_slots += merge(batch, rows, prefilled)
                admitted += len(prefilled.rows)
        if running and admitted:
            self.mid_batch_admissions += admitted
            if self._on_admit is not None:
                self._on_admit(admitted)

    def _step(self, batch: RunningBatch, rows: list[Row | None]) -> None:
        """One decoder step for every slot (a vacated one decodes a pad token nobody reads)."""
        live = [i for i, row in enumerate(rows) if row is not None]
        if self._on_batch is not None:
            self._on_batch(len(live))
        tokens = np.array([[self.model.pad_id if row is None else row.token] for row in rows], np.int64)  # (N, 1)
        feeds = {"input_ids": tokens, **batch.step_inputs(), "logits_positions": np.zeros(1, dtype=np.int64)}
        start = time.perf_counter()
        runner = self._step_runner(len(live))
        logits = self.model.run_decoder(feeds, batch.cache, runner=runner)["logits"][:, -1, :]  # (N, V)
        self._step_s += 0.2 * (time.perf_counter() - start - self._step_s)
        batch.advanced()
        advance([rows[i] for i in live], logits if len(live) == len(rows) else logits[live])  # (live, V)

    def _step_runner(self, rows: int) -> Any:
        """Where this step's decoder call runs: None (the worker) unless step_priority is
        "idle", steps are long (short ones cost less than the hand-over to another thread) and
        `rows` requests share the step (one alone has no other request to give way to)."""
        runner = self._idle_steps
        if runner is None or self._step_s < self.LANE_MIN_STEP_S or rows < 2:
            return None
        return functools.partial(runner.run, expected_s=self._step_s)

    # The prefill lane: takes waiting requests as they arrive, while the worker steps.

    def _handoffs(self, running: list[Job], slots: int) -> tuple[list[Handoff], list[Job]] | None:
        """(Worker.) What the lane has started, and the waiting jobs the worker starts itself:
        those that fit when the lane does not take them (nothing runs, or the steps are short).
        Waits when there is nothing to do; None: stop."""
        with self._cond:
            self._slots = slots
            self._lane_takes = bool(running) and self._step_s >= self.LANE_MIN_STEP_S
            if self._lane_takes and self._waiting:
                self._lane_cond.notify()  # rows left, or the lane may take now: it looks again
            while True:
                ready, self._ready = self._ready, []
                taken = [job for handoff in ready for job in handoff.jobs]
                self._in_lane = [job for job in self._in_lane if all(job is not t for t in taken)]
                held = running + taken
                mine = [] if self._lane_takes else self._take_fitting(held + self._in_lane, slots)
                self._running = held + mine
                if held or mine:
                    return ready, mine
                if self._closing and self._lane_stopped:
                    return None
                self._cond.wait()

    def _lane_work(self) -> None:
        try:
            while (jobs := self._lane_take()) is not None:
                handoff = self._lane_start(jobs)
                self.lane_started += len(jobs)
                if self._on_lane is not None:
                    self._on_lane(len(jobs))
                with self._cond:
                    self._ready.append(handoff)
                    self._cond.notify()
        finally:
            with self._cond:
                self._lane_stopped = True
                self._cond.notify()

    def _lane_start(self, jobs: list[Job]) -> Handoff:
        """(Lane.) Prefill `jobs`, their first tokens posted to the event loop before the hand-over."""
        for job in jobs:
            job.outbox = self._lane_outbox
        try:
            return self._started(jobs, self._prefiller)
        except Exception as exc:  # the lane outlives a failure; its requests fail, none leaks
            fail(jobs, exc)
            return Handoff(jobs)
        finally:
            self._lane_outbox.flush()
            for job in jobs:
                job.outbox = self._outbox  # the worker's from now on (after these, in order)

    def _lane_take(self) -> list[Job] | None:
        """(Lane.) Waiting jobs that fit beside the running rows and those in the lane; None: stop."""
        with self._cond:
            while True:
                if self._closing and not self._waiting:
                    return None
                running = [job for job in self._running if job.live] + self._in_lane
                jobs = self._take_fitting(running, self._slots) if self._lane_takes else []
                if jobs:
                    self._in_lane.extend(jobs)
                    return jobs
                self._lane_cond.wait()
