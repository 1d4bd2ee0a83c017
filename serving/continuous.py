"""Continuous (iteration-level) batching (Orca, OSDI 2022), decoder-only and encoder-decoder.

One worker thread holds the running batch (engine/running_batch.py). Between two decoder
steps it drops finished and cancelled rows, admits waiting requests (prefilled together, as a
static batch of them would be; their cache rows merged into the running cache), then runs one
step for every row. Each row chooses its tokens as `model.generate([prompt])` would
(serving/rows.py: one argmax for the plain greedy rows of a step, an engine search of its own for
a row with processors or sampling; a seeded row samples from the generator input 0 of that call
would use). Beam search and n > 1 run as a static batch of their own (the micro-batch path)
between two steps.

The requests admitted at one point are prefilled in one call, right before the step that
follows, and their first tokens are streamed as soon as they exist (what keeps the time to first
token near the idle one). Decoder-only prompts are left-padded through the decoder, whose
logits give each one's first token. Encoder-decoder sources are right-padded through the
encoder; the new rows' decoder start token then joins that step (an empty, masked past), which
gives their first token as soon as a call of their own would, without the extra call (a forced
prefix of several tokens does get a call of its own). Their cross K/V and encoder mask join the
batch's (source axis right-padded, the mask hides the padding), and the decoder takes per-row
position_ids and a self-attention attention_mask (exported where the family supports them:
Seq2SeqModel.row_positions). Artifacts whose rows cannot be merged (an encoder-decoder without
those inputs, preallocated KV buffers, fused attention, a device placement) are served by
`MicroBatchScheduler`; `make_scheduler` picks and logs which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqport.engine.causal_lm import left_pad, positions
from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError, SeqportError
from seqport.engine.inputs import pad_batch
from seqport.engine.kv_cache import KVCache
from seqport.engine.placement import HOST
from seqport.engine.running_batch import RunningBatch
from seqport.serving.batching import run_batch
from seqport.serving.jobs import GenerationRequest, Job
from seqport.serving.rows import Row, advance, make_row
from seqport.serving.scheduler import MicroBatchScheduler, SchedulerLimits

logger = logging.getLogger(__name__)

SCHEDULERS = ("continuous", "micro")


def continuous_unsupported(model: Any) -> str | None:
    """Why `model` cannot be batched continuously, or None when it can."""
    m = model.manifest
    if m.architecture not in ("decoder-only", "encoder-decoder"):
        return f"continuous batching serves decoder-only and encoder-decoder artifacts; this one is {m.architecture}"
    if m.architecture == "encoder-decoder" and not getattr(model, "row_positions", False):
        return (
            "the artifact's decoder takes no per-row position_ids and attention_mask (exported before "
            "seqport had them, or a family without them yet); re-export it to batch continuously"
        )
    if m.kv.allocation != "growing":
        return "the artifact preallocates its KV buffers (export with a growing cache to batch continuously)"
    if m.attention != "portable" and m.architecture == "decoder-only":  # encoder-decoder: the bias masks rows
        return f"attention {m.attention!r} takes no left-padded rows (export with --attention portable)"
    if getattr(model, "placement", HOST) is not HOST:
        return "the model runs in the device loop (continuous batching runs on the host placement)"
    return None


def make_scheduler(model: Any, limits: SchedulerLimits, kind: str = "continuous", **callbacks: Any) -> Any:
    """The scheduler `kind` asks for, or micro-batching where the artifact cannot batch continuously.

    Args:
        model: a loaded generating model.
        limits: admission limits.
        kind: "continuous" (falls back to "micro" with a log line) or "micro".
        **callbacks: on_batch(rows) and, for continuous batching, on_admit(count); `outbox`:
            where the worker's events go (MicroBatchScheduler's argument).

    Raises:
        ConfigError: `kind` is not one of SCHEDULERS.
    """
    if kind not in SCHEDULERS:
        raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    reason = continuous_unsupported(model) if kind == "continuous" else "asked for --scheduler micro"
    if reason is None:
        logger.info("continuous batching (up to %d rows)", limits.max_batch_rows)
        return ContinuousScheduler(model, limits, **callbacks)
    log = logger.info if kind == "micro" else logger.warning  # continuous asked for, micro given: say so
    log("static micro-batching: %s", reason)
    return MicroBatchScheduler(model, limits, on_batch=callbacks.get("on_batch"), outbox=callbacks.get("outbox"))


@dataclass(frozen=True)
class _Start:
    job: Job
    config: GenerationConfig
    first: list[int]  # the decoder's first tokens: prompt (+ prefix), or decoder start (+ prefix)
    source: list[int] | None  # encoder-decoder: the encoder's input


def _fail(jobs: list[Job], exc: Exception) -> None:
    if not isinstance(exc, SeqportError):
        logger.error("%d request(s) failed to start", len(jobs), exc_info=exc)
    for job in jobs:
        job.fail(exc)


def _rows_of(cache: KVCache, start: int, stop: int) -> KVCache:
    """Rows start..stop of a growing cache (views)."""
    return KVCache([k[start:stop] for k in cache.keys], [v[start:stop] for v in cache.values])


def _alone(request: GenerationRequest) -> bool:
    """Beam search and n > 1 decode as a static batch of their own; every other request is one
    row (a seeded sample too: its row has its own generator, seeded as input 0)."""
    return request.config.num_beams > 1 or request.config.num_return_sequences > 1


class ContinuousScheduler(MicroBatchScheduler):
    """Iteration-level batching behind the `Scheduler` interface (see the module docstring).

    Queue, cancel, close and the size checks are MicroBatchScheduler's; the worker differs.

    Args:
        model: a loaded generating model that `continuous_unsupported` accepts.
        limits: max_batch_rows bounds the running rows; kv_budget_bytes bounds the padded
            worst case, rows × the longest request's prompt + max_tokens (batch_wait_s unused).
        on_batch: called with the row count of every step (the batch-size histogram).
        on_admit: called with the number of requests that joined a batch already running.
        outbox: as MicroBatchScheduler's.
    """

    def __init__(
        self, model: Any, limits: SchedulerLimits, on_batch: Any = None, on_admit: Any = None, outbox: Any = None
    ) -> None:
        self._on_admit = on_admit
        self.mid_batch_admissions = 0
        self.placed_in_slots = 0  # rows written into a vacated slot (no copy of the running cache)
        kv = model.manifest.kv
        self._geometry = (kv.num_layers, kv.num_kv_heads, kv.head_dim, kv.dtype)
        self._eos = tuple(model.manifest.special_ids.eos)
        super().__init__(model, limits, on_batch, outbox)

    def _work(self) -> None:
        batch, rows = RunningBatch(*self._geometry), []  # rows[i]: slot i's row, None when vacated
        while True:
            batch, rows = self._vacate(batch, rows)
            live = [row for row in rows if row is not None]
            self._running = [row.job for row in live]
            jobs = self._admissions(live, len(rows))
            if jobs is None:
                return
            self._admit(batch, rows, jobs, running=bool(live))
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
            jobs: list[Job] = []
            while self._waiting and self._fits_running(rows, jobs, self._waiting[0], slots):
                jobs.append(self._waiting.popleft())
                jobs[-1].stamp("admitted")
                if _alone(jobs[-1].request):
                    break
            return jobs

    def _fits_running(self, rows: list[Row], jobs: list[Job], job: Job, slots: int) -> bool:
        running = [row.job for row in rows] + jobs
        if _alone(job.request):
            return True  # decoded on its own between two steps
        if len(running) + 1 > self.limits.max_batch_rows:
            return False
        budget = self.limits.kv_budget_bytes
        worst = max(j.kv_bytes for j in [*running, job])  # left padding: every row as long as the longest
        return not budget or worst * max(len(running) + 1, slots) <= budget  # vacated slots hold memory too

    def _admit(self, batch: RunningBatch, rows: list[Row | None], jobs: list[Job], running: bool) -> None:
        """Start `jobs`; their rows go into `rows` (free slots first)."""
        starts: dict[int, list[_Start]] = {}  # by first-token count: one prefill call per group
        for job in jobs:
            try:
                if job.live and _alone(job.request):
                    run_batch(self.model, [job])  # beams / n > 1: a static batch of its own
                elif job.live:
                    start = self._start(job)
                    starts.setdefault(len(start.first) if start.source else 0, []).append(start)
            except Exception as exc:  # the request fails, the worker and the running rows go on
                _fail([job], exc)
        admitted = 0
        for group in starts.values():
            try:
                admitted += self._prefill(batch, rows, group)
            except Exception as exc:
                _fail([start.job for start in group], exc)
        if running and admitted:
            self.mid_batch_admissions += admitted
            if self._on_admit is not None:
                self._on_admit(admitted)

    def _start(self, job: Job) -> _Start:
        """A request's checked options, first decoder tokens and (encoder-decoder) source."""
        model = self.model
        checked, config = model.check_inputs([job.request.prompt_ids], job.request.config)
        source = checked[0] if model.manifest.architecture == "encoder-decoder" else None
        return _Start(job, config, model.decoder_prompt(checked[0], config), source)

    def _prefill(self, batch: RunningBatch, rows: list[Row | None], starts: list[_Start]) -> int:
        """Prefill requests together (as a static batch of them would: prompts left-padded;
        encoder-decoder: sources right-padded through the encoder), emit each one's first token
        from the decoder call, and merge the rows that go on into the running batch (`rows`).
        A lone decoder start joins the next step instead (_join_next_step). Returns the number
        of rows merged."""
        model, encoder = self.model, {}
        if starts[0].source is not None:
            source, source_mask = pad_batch([s.source for s in starts], model.pad_id)  # (M, S)
            encoder = {k: v for k, v in model.encode(source, source_mask).items() if k.startswith("cross_")}
            encoder["encoder_attention_mask"] = source_mask
            for start in starts:
                start.job.stamp("encoded")
            prompt = np.array([s.first for s in starts], dtype=np.int64)  # (M, 1 + prefix): same length
            if prompt.shape[1] == 1:  # the decoder start alone: it joins the step about to run
                return self._join_next_step(batch, rows, starts, encoder)
            mask = np.ones_like(prompt)
        else:
            prompt, mask = left_pad([s.first for s in starts], model.pad_id)  # (M, L)
        cache = KVCache.empty(len(starts), *self._geometry)
        feeds = {"input_ids": prompt, "attention_mask": mask, "position_ids": positions(mask), **encoder}
        feeds["logits_positions"] = np.array([prompt.shape[1] - 1], dtype=np.int64)
        logits = model.run_decoder(feeds, cache)["logits"][:, -1, :]  # (M, V)
        new = [self._row(start) for start in starts]
        advance(new, logits)
        keep = [i for i, row in enumerate(new) if row.job.live]
        if keep:
            cache.take(np.array(keep, dtype=np.int64))
            kept = {name: value[keep] for name, value in encoder.items()}
            self._merge(batch, rows, [new[i] for i in keep], cache, mask[keep], kept)
        return len(keep)

    def _join_next_step(
        self, batch: RunningBatch, rows: list[Row | None], starts: list[_Start], encoder: dict[str, np.ndarray]
    ) -> int:
        """Encoder-decoder rows with an empty past (every slot masked) whose decoder start token
        the step that follows at once decodes at position 0 with the running rows. Measured
        against a decoder call of their own (the first token before the step of all rows): a
        decoder call fewer per admission, 12 % less CPU per request, for first tokens 1-2 ms
        later under 16 clients (docs/serving.md)."""
        new = [self._row(start) for start in starts]
        for row, start in zip(new, starts):
            row.token = start.first[0]
        empty = KVCache.empty(len(starts), *self._geometry)
        self._merge(batch, rows, new, empty, np.zeros((len(starts), 0), np.int64), encoder)
        return len(new)

    def _merge(
        self,
        batch: RunningBatch,
        rows: list[Row | None],
        new: list[Row],
        cache: KVCache,
        mask: np.ndarray,
        encoder: dict[str, np.ndarray],
    ) -> None:
        """`new` rows (their cache (M, H, L, D), mask (M, L), encoder values) into vacated slots
        of the batch where they fit in place, the rest appended."""
        free = [i for i, row in enumerate(rows) if row is None][: len(new)]
        n = len(free)
        first = {name: value[:n] for name, value in encoder.items()}
        if n and batch.place(np.array(free, dtype=np.int64), _rows_of(cache, 0, n), mask[:n], first):
            for i, row in zip(free, new):
                rows[i] = row
            self.placed_in_slots += n
            new, cache, mask = new[n:], _rows_of(cache, n, len(new)), mask[n:]
            encoder = {name: value[n:] for name, value in encoder.items()}
        if new:
            batch.admit(cache, mask, encoder)
            rows.extend(new)

    def _row(self, start: _Start) -> Row:
        return make_row(start.job, start.config, start.first, start.config.eos_token_ids or self._eos,
                        self.model.tokenizer)

    def _step(self, batch: RunningBatch, rows: list[Row | None]) -> None:
        """One decoder step for every slot (a vacated one decodes a pad token nobody reads)."""
        live = [i for i, row in enumerate(rows) if row is not None]
        if self._on_batch is not None:
            self._on_batch(len(live))
        tokens = np.array([[self.model.pad_id if row is None else row.token] for row in rows], np.int64)  # (N, 1)
        feeds = {"input_ids": tokens, **batch.step_inputs(), "logits_positions": np.zeros(1, dtype=np.int64)}
        logits = self.model.run_decoder(feeds, batch.cache)["logits"][:, -1, :]  # (N, V)
        batch.advanced()
        advance([rows[i] for i in live], logits if len(live) == len(rows) else logits[live])  # (live, V)
