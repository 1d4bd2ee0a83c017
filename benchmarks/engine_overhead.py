"""Engine overhead of plain greedy search: the share of each decode step spent outside the
decoder call (issue #16 asks for under 5 % at batch 1 on the bundled translator).

`seqport bench` reports the same figure, but forces exactly N tokens with min_new_tokens, a
processor, so it measures the processor path. Here nothing is processed: the stop id is the
vocabulary's last id, so random-weight rows run to N.

The path measured is what `generate()` takes for plain greedy search, and the first line says
which: on an artifact whose decoder has the greedy head (export/greedy_head.py: every
encoder-decoder export since issue #16) the argmax and its log-probability are computed inside
the decoder call, so they count in the call and not in the overhead (the step and tokens/s say
whether the whole got faster); on an encoder-decoder host request every step after the first
goes through engine/host_lane.py.

    python benchmarks/engine_overhead.py ARTIFACT --batch 1 --threads 2 [--floor] [--evict-mb 16]

Live, it prints the time between two decoder calls twice: in wall time (what a user waits)
and in the engine thread's CPU time (time.thread_time: the work the engine's thread did, not
the time it waited for a core held by onnxruntime's worker or a neighbour). Both are shares of
the live (wall) step.

--floor also measures the engine alone: the decoder's outputs of a first generation are
recorded and replayed (no onnxruntime work, no worker threads), so the time between two
replayed decoder calls is the engine's own per-step work. Replayed back to back, the engine's
code and data stay in the CPU caches, which a real decoder call evicts (it streams the model's
weights through them); so the floor is printed twice: warm, and with `--evict-mb` MB read inside
each replayed call (the decoder call's share of the caches, untimed), which is what the live
figure pays. The gap between the evicted floor and the live CPU figure is what sharing the
cores adds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import seqport.engine as sp
from seqport.cli.bench_runner import TimedRuntime, plain_greedy_config, step_timings, synthetic_inputs


class Replay:
    """A decoder that returns the outputs recorded for the same (input shape, past shape) call;
    with `evict`, each call first reads that buffer (untimed: inside the call), as a real
    decoder call reads the weights."""

    def __init__(self, runtime, evict: np.ndarray | None = None) -> None:
        self._runtime, self._seen, self._evict = runtime, {}, evict
        self.input_names, self.output_names = runtime.input_names, runtime.output_names

    def run(self, feeds, into=None):
        key = tuple((name, value.shape) for name, value in sorted(feeds.items()))
        if key not in self._seen:
            self._seen[key] = self._runtime.run(feeds, into=into) if into else self._runtime.run(feeds)
        if self._evict is not None:
            self._evict.sum()
        return self._seen[key]


def engine_alone_ms(model, inputs, config, repeats: int, evict: np.ndarray | None = None) -> float:
    """Median time between replayed decoder calls (ms): the engine's own work per step."""
    log: list[tuple[str, float, float]] = []
    plain = dict(model.runtimes)
    model.runtimes = {name: TimedRuntime(Replay(rt, evict), name, log) for name, rt in plain.items()}
    model.generate_ids(inputs, config)  # records
    steps = []
    for _ in range(repeats):
        log.clear()
        model.generate_ids(inputs, config)
        steps.append(float(np.median(step_timings(log)[2])))
    model.runtimes = plain
    return float(np.median(steps)) * 1e3


def live_ms(model, inputs, config, repeats: int) -> tuple[float, float, float, float]:
    """Median step, gap between decoder calls (wall and engine-thread CPU) in ms, and tokens/s."""
    log: list[tuple[str, float, float]] = []
    cpu: list[tuple[str, float, float]] = []
    plain = dict(model.runtimes)
    model.runtimes = {name: TimedRuntime(rt, name, log, cpu) for name, rt in plain.items()}
    figures = []
    for repeat in range(repeats + 1):  # the first is a warm-up
        log.clear()
        cpu.clear()
        start = time.perf_counter()
        model.generate_ids(inputs, config)
        total = time.perf_counter() - start
        ends, step_s, outside_s = step_timings(log)
        if repeat:  # one token per decoder call and input
            rate = len(ends) * len(inputs) / total
            figures.append((np.median(step_s), np.median(outside_s), np.median(step_timings(cpu)[2]), rate))
    model.runtimes = plain
    step, wall, thread, rate = np.median(np.array(figures), axis=0)
    return step * 1e3, wall * 1e3, thread * 1e3, rate


def measured_path(model) -> str:
    """Which greedy path generate() takes on this model (see the module docstring)."""
    manifest = model.manifest
    decoder = manifest.components["decoder"]
    head = "greedy_ids" in decoder.outputs
    lane = (
        manifest.architecture == "encoder-decoder"
        and manifest.kv.allocation == "growing"
        and {"position_ids", "attention_mask"} <= set(decoder.inputs)
    )
    argmax = "argmax in the graph (greedy head)" if head else "argmax on the host"
    return f"{argmax}, {'host lane' if lane else 'general step'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--floor", action="store_true", help="also time the engine alone (replayed decoder)")
    parser.add_argument("--evict-mb", type=float, default=16.0, help="MB each replayed call reads (--floor)")
    args = parser.parse_args(argv)
    model = sp.load(args.artifact, options=sp.RuntimeOptions(intra_op_threads=args.threads))
    inputs = synthetic_inputs(model.manifest, args.batch, 32)
    config = plain_greedy_config(model.manifest, args.new_tokens)
    step, wall, thread, rate = live_ms(model, inputs, config, args.repeats)
    print(
        f"{args.artifact} ({measured_path(model)}) batch {args.batch}: step {step:.3f} ms, outside the decoder "
        f"call {wall:.3f} ms "
        f"({100 * wall / step:.1f} %), of it engine-thread CPU {thread:.3f} ms ({100 * thread / step:.1f} %); "
        f"{rate:.0f} tokens/s (whole generate call); median of {args.repeats} runs of {args.new_tokens} "
        f"tokens; load average {os.getloadavg()[0]:.2f}"
    )
    if args.floor:
        warm = engine_alone_ms(model, inputs, config, args.repeats)
        evict = np.ones(int(args.evict_mb * 2**20), dtype=np.uint8)
        cold = engine_alone_ms(model, inputs, config, args.repeats, evict)
        print(
            f"  engine alone (replayed decoder): {warm:.3f} ms per step warm ({100 * warm / step:.1f} % of the live "
            f"step), {cold:.3f} ms with {args.evict_mb:g} MB read per call ({100 * cold / step:.1f} %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
