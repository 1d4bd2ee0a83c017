"""What every runner shares: the plan it reads, the timing protocol, peak RSS, versions.

Stdlib + numpy only: the Optimum runner imports this from its own virtual environment, where
seqport is not installed. Each runner is one process running one system on one (model, batch),
so `peak_rss_mb` (VmHWM, see there) is that system's own.

Timing protocol, identical for every system: `warmup` unmeasured calls, then `repeats` rounds of
one generate call for exactly N new tokens per input and one for exactly 1. Per-step time is
(median t(N) − median t(1)) / (N − 1): the same decode-step definition for every system, whatever
it exposes (encoder pass and prompt prefill are in t(1), not in the step).

Decode measured inside the call (plan["decode_in_call"], benchmarks/smollm2.py's long context):
t(N) − t(1) takes the prefill of one call from the prefill of another. After a 2048-token prompt
the prefill is ~3.6 s and the decode ~1.8 s, so a 2 % difference between the two prefills (noise,
or a cost that grows with the KV capacity, P+N against P+1) moves the per-step figure by ~0.6 ms
(docs/benchmarks.md, "Long context"). A runner that can say when its first new token came out
gives `split`; the N-token call of each round is then timed through it, and the record also
carries `decode_ms_per_step`: (t(N) − t(first token)) / (N − 1) of that same call, per round.

Interleaved rounds (plan["interleave"], compare.py's default): the runner loads and warms up,
says `{"ready": ...}`, then times one round per "round" line on stdin (`{"round": ...}` back)
until "finish", when it emits its record. compare.py keeps one such worker per system and asks
each for a round in turn, so a slow minute on the shared machine hits every system alike.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

#: generate(batch_ids, n) -> new-token count per input; each call must produce exactly n per input.
Generate = Callable[[list[list[int]], int], list[int]]
#: greedy_ids(prompt_ids, n) -> the n new ids of one prompt (batch 1), for the agreement column.
GreedyIds = Callable[[list[int], int], list[int]]
#: split(batch_ids, n) -> (seconds until the call's first new token, seconds for the whole call):
#: one call for exactly n new tokens per input, as generate makes.
Split = Callable[[list[list[int]], int], tuple[float, float]]


def read_plan() -> dict[str, Any]:
    """The plan a runner gets as its only argument: a path to a JSON file."""
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {Path(sys.argv[0]).name} PLAN.json")
    return json.loads(Path(sys.argv[1]).read_text())


def emit(record: dict[str, Any]) -> None:
    """The runner's result: one JSON line, the last line of stdout."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def peak_rss_mb() -> float:
    """Peak resident set size of this process image in MiB.

    VmHWM from /proc/self/status where there is one: it starts afresh at exec. getrusage's
    ru_maxrss does not (Linux keeps it across fork and exec), so a runner would inherit its
    parent's peak; it is the fallback elsewhere (KiB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def versions(*names: str) -> dict[str, str]:
    """python and each named distribution's version ("" if absent)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    return found


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50": round(float(np.median(ms)), 3), "p90": round(float(np.percentile(ms, 90)), 3), "n": len(ms)}


def _timed(generate: Generate, inputs: list[list[int]], n: int) -> float:
    start = time.perf_counter()
    counts = generate(inputs, n)
    elapsed = time.perf_counter() - start
    if list(counts) != [n] * len(inputs):
        raise RuntimeError(f"asked for exactly {n} new tokens per input, got {list(counts)}")
    return elapsed


def one_round(generate: Generate, inputs: list[list[int]], n: int) -> tuple[float, float]:
    """One timed round: seconds for exactly n new tokens per input, then for exactly 1."""
    return _timed(generate, inputs, n), _timed(generate, inputs, 1)


def split_round(split: Split, generate: Generate, inputs: list[list[int]], n: int) -> tuple[float, float, float]:
    """One timed round with the n-token call timed through `split`: (seconds for n tokens,
    seconds for 1 token, seconds per decode step inside the n-token call)."""
    first_in_call, full = split(inputs, n)
    return full, _timed(generate, inputs, 1), (full - first_in_call) / (n - 1)


def summarise(
    full: Sequence[float], first: Sequence[float], batch: int, n: int, in_call: Sequence[float] = ()
) -> dict[str, Any]:
    """The timing fields of a record from each round's seconds for n tokens and for 1 token
    (and, when given, each round's seconds per step inside its n-token call)."""
    generate_ms, first_ms = _percentiles(full), _percentiles(first)
    step = (generate_ms["p50"] - first_ms["p50"]) / (n - 1) if n > 1 else None
    fields = {
        "generate_ms": generate_ms,
        "first_token_ms": first_ms,
        "ms_per_step": round(step, 3) if step is not None else None,
        "tokens_per_s": round(batch * n / (generate_ms["p50"] / 1e3), 2),
    }
    if in_call:
        fields["decode_ms_per_step"] = _percentiles(in_call)
    return fields


def round_timer(generate: Generate, plan: dict[str, Any], split: Split | None = None) -> Callable[[], tuple]:
    """One timed round of the plan, called with no arguments: `split_round` where the plan asks
    for the in-call decode and the runner can split its call, else `one_round`."""
    inputs, n = plan["inputs"], plan["new_tokens"]
    if plan.get("decode_in_call") and split is not None and n > 1:
        return partial(split_round, split, generate, inputs, n)
    return partial(one_round, generate, inputs, n)


def measure(generate: Generate, plan: dict[str, Any], split: Split | None = None) -> dict[str, Any]:
    """Run the protocol above on plan["inputs"] with plan["new_tokens"]; returns the timing fields."""
    timed = round_timer(generate, plan, split)
    for _ in range(plan["warmup"]):
        timed()
    rounds = [timed() for _ in range(plan["repeats"])]
    in_call = [r[2] for r in rounds if len(r) > 2]  # split rounds only
    return summarise([r[0] for r in rounds], [r[1] for r in rounds], len(plan["inputs"]), plan["new_tokens"], in_call)


def serve_rounds(
    generate: Generate, plan: dict[str, Any], lines: Iterable[str], split: Split | None = None
) -> dict[str, Any]:
    """Interleaved mode: warm up, say ready, time one round per "round" line until "finish".

    Returns the timing fields of `measure` plus `rounds`: each round's generate and first-token
    milliseconds and tokens/s (and its in-call decode ms per step with plan["decode_in_call"]
    and a `split`), in order (compare.py lines them up with the other systems').
    """
    inputs, n = plan["inputs"], plan["new_tokens"]
    timed = round_timer(generate, plan, split)
    for _ in range(plan["warmup"]):
        timed()
    emit({"ready": True, "rss_after_warmup_mb": peak_rss_mb()})
    rounds = []
    for line in lines:
        command = line.strip()
        if command == "finish":
            break
        if command != "round":
            raise RuntimeError(f"unknown command {command!r}: expected 'round' or 'finish'")
        full, first, *in_call = timed()
        rounds.append(
            {
                "generate_ms": round(full * 1e3, 3),
                "first_token_ms": round(first * 1e3, 3),
                "tokens_per_s": round(len(inputs) * n / full, 2),
                **({"decode_ms_per_step": round(in_call[0] * 1e3, 3)} if in_call else {}),
            }
        )
        emit({"round": len(rounds), **rounds[-1]})
    if not rounds:
        raise RuntimeError("finished before any round was asked for")
    full = [r["generate_ms"] / 1e3 for r in rounds]
    first = [r["first_token_ms"] / 1e3 for r in rounds]
    in_call = [r["decode_ms_per_step"] / 1e3 for r in rounds if "decode_ms_per_step" in r]
    return {**summarise(full, first, len(inputs), n, in_call), "rounds": rounds}


def run(
    load: Callable[[], Generate | tuple[Generate, GreedyIds] | tuple[Generate, GreedyIds, Split]],
    plan: dict[str, Any],
    names: Sequence[str],
    import_s: float | None = None,
) -> None:
    """Load (timed), measure, emit one record with import and load times, peak RSS and versions.

    `load` returns generate, or (generate, greedy_ids), or (generate, greedy_ids, split): with
    plan["agreement_prompts"] (lists of ids) the record also carries `agreement_ids`, each
    prompt's plan["agreement_new"] greedy ids at batch 1, taken after the timed rounds
    (benchmarks/smollm2.py compares them); `split` times plan["decode_in_call"] runs (see above).
    `import_s`: seconds the runner spent importing its system's modules before calling this.
    """
    start = time.perf_counter()
    loaded = load()
    generate, greedy_ids, split = (*loaded, None)[:3] if isinstance(loaded, tuple) else (loaded, None, None)
    load_s = time.perf_counter() - start
    record = {
        "import_s": None if import_s is None else round(import_s, 3),
        "load_s": round(load_s, 3),
        "rss_after_load_mb": peak_rss_mb(),
    }
    interleaved = plan.get("interleave")
    record.update(serve_rounds(generate, plan, sys.stdin, split) if interleaved else measure(generate, plan, split))
    record.update(peak_rss_mb=peak_rss_mb(), versions=versions(*names))
    if plan.get("agreement_prompts") and greedy_ids is not None:
        record["agreement_ids"] = [greedy_ids(p, plan["agreement_new"]) for p in plan["agreement_prompts"]]
    emit(record)
