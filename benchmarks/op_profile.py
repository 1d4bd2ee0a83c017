"""Where a decode step's time goes, by operator type: onnxruntime's profiler over one generation.

    python benchmarks/op_profile.py ARTIFACT [--batch 1] [--input-tokens 32] [--new-tokens 64] [--threads 2]

Loads the artifact through the public API with onnxruntime's profiling switched on (the
backend's SessionOptions, patched here only), generates exactly N tokens greedily for `batch`
rows of synthetic ids, and sums the decoder's node times by op type over the decode steps (the
prefill call, the first, is left out). Prints each op type's share of node time, and node time
against the wall time of the decoder calls (the rest is onnxruntime's own per-run work: feeds,
allocation, thread hand-offs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import seqport.engine as sp
import seqport.runtimes.onnxruntime as backend
from seqport.cli.bench_runner import synthetic_inputs


def _profiling(prefix: str):
    original = backend.OrtSession._session_options

    def patched(self, options, level=None):
        so = original(self, options, level)
        so.enable_profiling = True
        so.profile_file_prefix = prefix
        return so

    return patched


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="seqport-profile-")
    backend.OrtSession._session_options = _profiling(str(Path(folder) / "ort"))
    model = sp.load(args.artifact, options=sp.RuntimeOptions(intra_op_threads=args.threads))
    inputs = synthetic_inputs(model.manifest, args.batch, args.input_tokens)
    config = sp.GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    start = time.perf_counter()
    model.generate_ids(inputs, config)
    wall = time.perf_counter() - start
    trace = json.loads(Path(model.runtimes["decoder"].inference_session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"]
    by_op: dict[str, float] = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first_end:
            by_op[e["args"]["op_name"]] += e["dur"]
    nodes, run_us = sum(by_op.values()), sum(r["dur"] for r in runs[1:])
    print(f"{args.artifact} batch {args.batch}: {len(runs) - 1} decode steps, {run_us / (len(runs) - 1) / 1e3:.2f} ms "
          f"per decoder call, node time {100 * nodes / run_us:.0f} % of it; generate wall {wall:.2f} s")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"  {op:28s} {100 * us / nodes:5.1f} %  {us / (len(runs) - 1) / 1e3:7.3f} ms/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
