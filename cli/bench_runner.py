"""`seqport bench`'s measuring: load time, time to first token, per-step latency, tokens/s, RSS.

Each (runtime, batch size) runs in a fresh Python process (`python -m seqport.cli.bench_worker
PLAN`), so its peak RSS (getrusage ru_maxrss) is its own and no runtime warms another's caches.
A run loads the artifact once, then generates warmup + repeats times exactly `new_tokens` tokens
per input from synthetic inputs of `input_length` ids; the median and p90 of the repeats are
reported. Exactly N tokens: min_new_tokens = max_new_tokens = N (as HF and CTranslate2 are
driven), so EOS cannot end a run early; every run is checked to have produced N per input.

Time stamps come from a thin proxy around each loaded component (`Runtime.run`): time to first
token is generate-start → end of the first decoder call (source encoding and prompt prefill
included); a step is the time between the ends of two consecutive decoder calls (the engine's
search, cache update and feed checks included). Engine overhead is the part of a step spent
outside the decoder call: step − decoder call, reported in ms and as a share of the step;
`engine_cpu_ms` is the same gap in the engine thread's CPU time (time.thread_time), which
leaves out time the thread waited for a core (onnxruntime's workers, neighbours).

Torch-free: the torch backend is only imported inside its worker, through the runtime registry.
benchmarks/engine_overhead.py and benchmarks/kv_growth.py reuse TimedRuntime, step_timings,
plain_greedy_config and synthetic_inputs.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqport.cli.bench_report import record_context
from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError, SeqportError
from seqport.engine.inputs import plain_id_range
from seqport.engine.manifest import Manifest, load_manifest
from seqport.engine.runtime import BACKENDS, RuntimeOptions

GENERATING = ("encoder-decoder", "decoder-only")
STEP_COMPONENTS = ("decoder_init", "decoder")


@dataclasses.dataclass(frozen=True)
class BenchPlan:
    """One measured run: one runtime, one batch size, in its own process.

    Args:
        artifact: the artifact folder.
        runtime: backend name ("onnxruntime", "torch").
        provider: execution provider / device ("cpu", "cuda", ...).
        batch: inputs per generate call.
        new_tokens: tokens generated per input, exactly.
        input_length: ids per synthetic input (an encoder-decoder source ends with EOS).
        warmup: unmeasured generate calls first.
        repeats: measured generate calls.
        threads: intra-op threads (0: the backend decides).
    """

    artifact: str
    runtime: str = "onnxruntime"
    provider: str = "cpu"
    batch: int = 1
    new_tokens: int = 64
    input_length: int = 32
    warmup: int = 2
    repeats: int = 5
    threads: int = 0

    def problems(self, manifest: Manifest) -> list[str]:
        """Everything wrong with this plan for that artifact (empty when it can run)."""
        found = []
        if self.runtime not in BACKENDS:
            found.append(f"unknown runtime {self.runtime!r}; supported runtimes are: {', '.join(BACKENDS)}")
        for name in ("batch", "new_tokens", "input_length", "repeats"):
            if getattr(self, name) < 1:
                found.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.threads < 0:
            found.append("warmup and threads must be >= 0")
        if manifest.architecture not in GENERATING:
            found.append(f"bench measures generation; a {manifest.architecture} artifact does not generate")
        needed = (
            self.input_length + self.new_tokens
            if manifest.architecture == "decoder-only"
            else max(self.input_length, self.new_tokens)
        )
        if needed > manifest.max_positions:
            found.append(
                f"input_length {self.input_length} and new_tokens {self.new_tokens} need {needed} positions; "
                f"this model has {manifest.max_positions}: lower --input-length or --new-tokens"
            )
        return found


def run_benchmarks(
    artifact: str | Path,
    runtimes: Sequence[str],
    batch_sizes: Sequence[int],
    on_record: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Measure every (runtime, batch size), each in a fresh process; returns one record per run.

    Args:
        artifact: the artifact folder.
        runtimes: backend names, e.g. ["onnxruntime", "torch"].
        batch_sizes: e.g. [1, 8].
        on_record: called with each record as soon as it is measured.
        timeout: seconds allowed per run.
        **settings: the other BenchPlan fields (new_tokens, input_length, warmup, ...).

    Raises:
        ConfigError: a setting that cannot run on this artifact (all problems at once).
        SeqportError: a run failed (its error is quoted).
    """
    manifest = load_manifest(artifact)
    plans = [BenchPlan(str(artifact), runtime=r, batch=b, **settings) for r in runtimes for b in batch_sizes]
    problems = sorted({p for plan in plans for p in plan.problems(manifest)})
    if problems:
        raise ConfigError("cannot benchmark: " + "; ".join(problems))
    records = []
    for plan in plans:
        records.append(run_in_subprocess(plan, timeout))
        if on_record is not None:
            on_record(records[-1])
    return records


def run_in_subprocess(plan: BenchPlan, timeout: float | None = None) -> dict[str, Any]:
    """One plan measured by `python -m seqport.cli.bench_worker` (fresh process, own RSS)."""
    command = [sys.executable, "-m", "seqport.cli.bench_worker", json.dumps(dataclasses.asdict(plan))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SeqportError(f"bench run {plan.runtime} batch {plan.batch} took over {timeout:g} s") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit status {done.returncode}"
        raise SeqportError(f"bench run {plan.runtime} batch {plan.batch} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class TimedRuntime:
    """A loaded component that logs (component, start, end) of every call; same Runtime interface.

    `cpu`, when given, gets the same entries in the calling thread's CPU time
    (time.thread_time): a gap in it is work the engine's thread did, not time it waited for a
    core held by onnxruntime's workers or a neighbour.
    """

    def __init__(
        self, runtime, name: str, log: list[tuple[str, float, float]], cpu: list[tuple[str, float, float]] | None = None
    ) -> None:
        self._runtime, self._name, self._log, self._cpu = runtime, name, log, cpu

    @property
    def input_names(self) -> list[str]:
        return self._runtime.input_names

    @property
    def output_names(self) -> list[str]:
        return self._runtime.output_names

    def run(self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        # thread_time() is a system call (~0.6 µs warm, more after a decoder call): the measurement's
        # work, not the engine's, so both sit inside the wall stamps, as in the first line
        start, cpu_start = time.perf_counter(), time.thread_time()
        outputs = self._runtime.run(feeds, into=into) if into else self._runtime.run(feeds)
        cpu_end = time.thread_time()
        self._log.append((self._name, start, time.perf_counter()))
        if self._cpu is not None:
            self._cpu.append((self._name, cpu_start, cpu_end))
        return outputs


def synthetic_inputs(manifest: Manifest, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    """`batch` inputs of `length` ids between the special ids (an encoder-decoder source ends with EOS)."""
    ids = manifest.special_ids
    low, high = plain_id_range([*ids.eos, ids.pad, ids.bos, ids.unk, ids.decoder_start], manifest.vocab_size)
    rows = np.random.default_rng(seed).integers(low, high, size=(batch, length))  # (B, L)
    if manifest.architecture == "encoder-decoder":
        rows[:, -1] = ids.eos[0]
    return rows.tolist()


def step_timings(log: list[tuple[str, float, float]]) -> tuple[list[float], list[float], list[float]]:
    """From a `TimedRuntime` log of one generate call: the end of each decoder call, each step (the
    time between two ends) and the part of that step spent outside the decoder call."""
    calls = [(begin, end) for name, begin, end in log if name in STEP_COMPONENTS]
    ends = [end for _, end in calls]
    outside = [begin - before for (begin, _), before in zip(calls[1:], ends)]
    return ends, np.diff(ends).tolist(), outside


def plain_greedy_config(manifest: Manifest, new_tokens: int) -> GenerationConfig:
    """Greedy decoding with no processor that random-weight rows run to `new_tokens`: the stop id
    is the vocabulary's last id instead of EOS (min_new_tokens would add a processor, and make
    the device loop fetch full logits)."""
    return GenerationConfig(max_new_tokens=new_tokens, eos_token_ids=(manifest.vocab_size - 1,))


def exact_length_config(new_tokens: int) -> GenerationConfig:
    """Greedy decoding of exactly `new_tokens` per input: EOS is forbidden until the last one."""
    return GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def measure(plan: BenchPlan) -> dict[str, Any]:
    """Run `plan` in this process (called by the worker) and return its record."""
    from seqport.engine.api import load

    started = time.perf_counter()
    model = load(
        plan.artifact,
        provider=plan.provider,
        options=RuntimeOptions(backend=plan.runtime, intra_op_threads=plan.threads),
    )
    load_s = time.perf_counter() - started
    rss_after_load = peak_rss_mb()
    log: list[tuple[str, float, float]] = []
    cpu: list[tuple[str, float, float]] = []
    model.runtimes = {name: TimedRuntime(rt, name, log, cpu) for name, rt in model.runtimes.items()}
    inputs = synthetic_inputs(model.manifest, plan.batch, plan.input_length)
    texts = [model.tokenizer.decode(ids) for ids in inputs]
    config = exact_length_config(plan.new_tokens)
    samples: dict[str, list[float]] = {
        "tokenize": [], "ttft": [], "step": [], "engine_overhead": [], "engine_cpu": [], "generate": []
    }
    for repeat in range(plan.warmup + plan.repeats):
        tick = time.perf_counter()
        model.input_ids(texts)
        tokenize = time.perf_counter() - tick
        log.clear()
        cpu.clear()
        start = time.perf_counter()
        results = model.generate_ids(inputs, config)
        total = time.perf_counter() - start
        _check_lengths(results, plan.new_tokens)
        ends, steps, outside = step_timings(log)
        if repeat >= plan.warmup:
            samples["tokenize"].append(tokenize)
            samples["ttft"].append(ends[0] - start)
            samples["step"].extend(steps)
            samples["engine_overhead"].extend(outside)
            samples["engine_cpu"].extend(step_timings(cpu)[2])  # the same gaps in the thread's CPU time
            samples["generate"].append(total)
    record = record_context(plan, model.manifest)
    record.update({f"{k}_ms": _percentiles(v) for k, v in samples.items()})
    record.update(
        load_s=round(load_s, 4),
        tokens_per_s=round(plan.batch * plan.new_tokens / float(np.median(samples["generate"])), 2),
        engine_overhead_pct=_share(samples["engine_overhead"], samples["step"]),
        rss_after_load_mb=rss_after_load,
        peak_rss_mb=peak_rss_mb(),
    )
    return record


def _share(part: list[float], whole: list[float]) -> float | None:
    """Median part as a percentage of the median whole (None without samples)."""
    if not part or not whole:
        return None
    return round(100 * float(np.median(part)) / float(np.median(whole)), 2)


def _check_lengths(results, expected: int) -> None:
    counts = [len(r.ids) + (r.finish_reason == "eos") for r in results]
    if any(c != expected for c in counts):
        raise SeqportError(f"asked for exactly {expected} new tokens per input, got {counts}")


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:  # one new token: no step between two decoder calls
        return {"p50": None, "p90": None, "n": 0}
    ms = np.asarray(seconds) * 1e3
    return {"p50": round(float(np.median(ms)), 4), "p90": round(float(np.percentile(ms, 90)), 4), "n": len(ms)}


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (None where getrusage is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)  # bytes on macOS, KiB on Linux
