"""Engine overhead of plain greedy search: the share of each decode step spent outside the
decoder call (issue #6 asks for under 5 % at batch 1 on the t5-small shape).

`seqport bench` reports the same figure, but forces exactly N tokens with min_new_tokens, a
processor, so it measures the processor path. Here nothing is processed: the stop id is the
vocabulary's last id, so random-weight rows run to N.

    python benchmarks/engine_overhead.py build/compare/t5/seqport-fp32 --batch 1 --threads 2 [--floor]

--floor also measures the engine alone: the decoder's outputs of a first generation are
recorded and replayed (no onnxruntime work, no worker threads), so the time between two
replayed decoder calls is the engine's own per-step work on an otherwise idle core. The gap
between it and the live figure is what sharing the cores with onnxruntime's threads (and any
neighbour) adds.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import seqport.engine as sp
from seqport.cli.bench_runner import TimedRuntime, plain_greedy_config, step_timings, synthetic_inputs


class Replay:
    """A decoder that returns the outputs recorded for the same (input shape, past shape) call."""

    def __init__(self, runtime) -> None:
        self._runtime, self._seen = runtime, {}
        self.input_names, self.output_names = runtime.input_names, runtime.output_names

    def run(self, feeds, into=None):
        key = tuple((name, value.shape) for name, value in sorted(feeds.items()))
        if key not in self._seen:
            self._seen[key] = self._runtime.run(feeds, into=into) if into else self._runtime.run(feeds)
        return self._seen[key]


def engine_alone_ms(model, inputs, config, repeats: int) -> float:
    """Median time between replayed decoder calls (ms): the engine's own work per step."""
    log: list[tuple[str, float, float]] = []
    model.runtimes = {name: TimedRuntime(Replay(rt), name, log) for name, rt in model.runtimes.items()}
    model.generate_ids(inputs, config)  # records
    steps = []
    for _ in range(repeats):
        log.clear()
        model.generate_ids(inputs, config)
        steps.append(float(np.median(step_timings(log)[1])))
    return float(np.median(steps)) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--floor", action="store_true", help="also time the engine alone (replayed decoder)")
    args = parser.parse_args(argv)
    model = sp.load(args.artifact, options=sp.RuntimeOptions(intra_op_threads=args.threads))
    plain = dict(model.runtimes)
    log: list[tuple[str, float, float]] = []
    model.runtimes = {name: TimedRuntime(rt, name, log) for name, rt in model.runtimes.items()}
    inputs = synthetic_inputs(model.manifest, args.batch, 32)
    config = plain_greedy_config(model.manifest, args.new_tokens)
    steps, outside = [], []
    for repeat in range(args.repeats + 1):  # the first is a warm-up
        log.clear()
        model.generate_ids(inputs, config)
        _, step_s, outside_s = step_timings(log)
        if repeat:
            steps.append(float(np.median(step_s)))
            outside.append(float(np.median(outside_s)))
    step, engine = np.median(steps) * 1e3, np.median(outside) * 1e3
    print(
        f"{args.artifact} batch {args.batch}: step {step:.2f} ms, outside the decoder call {engine:.3f} ms "
        f"({100 * engine / step:.1f} %), median of {args.repeats} runs of {args.new_tokens} tokens"
    )
    if args.floor:
        model.runtimes = plain
        alone = engine_alone_ms(model, inputs, config, args.repeats)
        share = 100 * alone / step
        print(f"  engine alone (replayed decoder): {alone:.3f} ms per step ({share:.1f} % of the live step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
