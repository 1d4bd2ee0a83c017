"""Engine overhead of plain greedy search: the share of each decode step spent outside the
decoder call (issue #6 asks for under 5 % at batch 1 on the t5-small shape).

`seqport bench` reports the same figure, but forces exactly N tokens with min_new_tokens, a
processor, so it measures the processor path. Here nothing is processed: the stop id is the
vocabulary's last id, so random-weight rows run to N.

    python benchmarks/engine_overhead.py build/compare/t5/seqport-fp32 --batch 1 --threads 2
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import seqport.engine as sp
from seqport.cli.bench_runner import TimedRuntime, plain_greedy_config, step_timings, synthetic_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    model = sp.load(args.artifact, options=sp.RuntimeOptions(intra_op_threads=args.threads))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
