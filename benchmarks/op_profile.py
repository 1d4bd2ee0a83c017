"""Where a decode step's time goes, by operator type: onnxruntime's profiler over one generation.

    python benchmarks/op_profile.py ARTIFACT [--batch 1] [--input-tokens 32] [--new-tokens 64] [--threads 2]
        [--genai GENAI_DIR --genai-python .venv-genai/bin/python] [--trace FILE ...]

Loads the artifact through the public API with onnxruntime's profiling switched on (the
backend's session options, patched here only), generates 4 tokens (warm-up), then exactly N
tokens greedily for `batch` rows of random ids, and reads the decode steps of that generation
(its last N - 1 decoder calls; the prefill call gives the first token). With `--genai`, the same
generation runs in onnxruntime-genai (its venv, `peers/genai_profile.py`: `enable_profiling` in
a copy of its genai_config.json) and the two are printed side by side. `--trace` summarises
traces written before (ARTIFACT is then ignored; pass `-`).

Per system: the decoder call's median time, the median time *outside* it between two calls
(the loop's own work: seqport's Python step, GenAI's C++ one), and per op type the node count
and two sums: the mean time per step, and the sum over nodes of each node's *minimum* over the
steps. The minima are what to compare on a shared machine (a node that once found the cores
free shows its own cost; means carry the neighbours' load). Both are inflated by the profiler
itself (an event per node), so compare systems, not these figures against a wall-clock run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: op types that are the weight products (the rest is "other": attention, norms, activations, glue)
MATMULS = ("MatMul", "Gemm", "MatMulNBits", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul")


@dataclass
class Profile:
    """One generation's decode steps, read from an onnxruntime trace (times in ms per step)."""

    steps: int
    call_ms: float  # median decoder call
    outside_ms: float  # median time between the end of one call and the start of the next
    count: dict[str, int] = field(default_factory=dict)  # op type -> nodes per step
    mean_ms: dict[str, float] = field(default_factory=dict)  # op type -> mean time per step
    min_ms: dict[str, float] = field(default_factory=dict)  # op type -> sum of per-node minima


def read_trace(path: Path, steps: int) -> Profile:
    """The last `steps` model runs of an onnxruntime profile (JSON list of trace events)."""
    trace = json.loads(Path(path).read_text())
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    if len(runs) < steps + 1:
        raise SystemExit(f"{path}: {len(runs)} model runs, need {steps + 1} (prefill + {steps} steps)")
    runs = runs[-steps - 1 :]
    begin, end = runs[0]["ts"] + runs[0]["dur"], runs[-1]["ts"] + runs[-1]["dur"]
    total: dict[str, float] = defaultdict(float)
    best: dict[str, tuple[float, str]] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or not begin < e["ts"] < end:
            continue
        op = e["args"]["op_name"]
        total[op] += e["dur"]
        if e["name"] not in best or e["dur"] < best[e["name"]][0]:
            best[e["name"]] = (e["dur"], op)
    profile = Profile(
        steps=steps,
        call_ms=statistics.median(r["dur"] for r in runs[1:]) / 1e3,
        outside_ms=statistics.median(b["ts"] - a["ts"] - a["dur"] for a, b in zip(runs, runs[1:])) / 1e3,
    )
    for duration, op in best.values():
        profile.count[op] = profile.count.get(op, 0) + 1
        profile.min_ms[op] = profile.min_ms.get(op, 0.0) + duration / 1e3
    profile.mean_ms = {op: us / steps / 1e3 for op, us in total.items()}
    return profile


def profile_seqport(artifact: str, args: argparse.Namespace, folder: Path) -> Path:
    import seqport.engine as sp
    import seqport.runtimes.onnxruntime as backend

    original = backend.OrtSession._session_options

    def patched(self, options, level=None):
        so = original(self, options, level)
        so.enable_profiling = True
        so.profile_file_prefix = str(folder / "seqport")
        return so

    backend.OrtSession._session_options = patched
    model = sp.load(artifact, options=sp.RuntimeOptions(intra_op_threads=args.threads))
    ids = np.random.default_rng(0).integers(100, 49000, size=(args.batch, args.input_tokens))  # (B, P)
    for n in (4, args.new_tokens):
        model.generate_ids(ids.tolist(), sp.GenerationConfig(max_new_tokens=n, min_new_tokens=n))
    return Path(model.runtimes["decoder"].inference_session.end_profiling())


def profile_genai(folder: str, args: argparse.Namespace, out: Path) -> Path:
    step = [args.genai_python, str(HERE / "peers" / "genai_profile.py"), folder, str(out / "genai")]
    step += [str(v) for v in (args.batch, args.input_tokens, args.new_tokens, args.threads)]
    done = subprocess.run(step, capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def _share(profile: Profile) -> str:
    nodes = sum(profile.min_ms.values())
    other = sum(ms for op, ms in profile.min_ms.items() if op not in MATMULS)
    return f"{nodes:.2f} ms of node minima per step, {other:.2f} ms ({100 * other / nodes:.0f} %) outside the MatMuls"


def _cells(profile: Profile, op: str) -> str:
    return f" | {profile.count.get(op, 0):5d} {profile.min_ms.get(op, 0):9.3f} {profile.mean_ms.get(op, 0):10.3f}"


def render(named: dict[str, Profile]) -> str:
    """A text table: one header line per system, then op types by their largest minima sum."""
    lines = []
    for name, p in named.items():
        lines.append(
            f"{name}: {p.steps} decode steps; decoder call {p.call_ms:.2f} ms, outside it {p.outside_ms:.3f} ms "
            f"(medians); {sum(p.count.values())} nodes, {_share(p)}"
        )
    ops = {op for p in named.values() for op in p.count}
    ops = sorted(ops, key=lambda op: -max(q.min_ms.get(op, 0) for q in named.values()))
    lines.append(f"{'op type':34s}" + "".join(f" | {name[:26]:>26s}" for name in named))
    lines.append(f"{'':34s}" + " | {:>5s} {:>9s} {:>10s}".format("nodes", "min ms", "mean ms") * len(named))
    for op in ops:
        row = "".join(_cells(p, op) for p in named.values())
        lines.append(f"{op:34s}{row}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="seqport artifact, or - with --trace")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--genai", help="an onnxruntime-genai model builder folder to profile the same way")
    p.add_argument("--genai-python", default=".venv-genai/bin/python")
    p.add_argument("--trace", nargs="*", default=[], help="summarise these onnxruntime traces instead")
    args = p.parse_args(argv)
    steps = args.new_tokens - 1
    traces = {Path(t).name: Path(t) for t in args.trace}
    if not traces:
        folder = Path(tempfile.mkdtemp(prefix="seqport-profile-"))
        traces[f"seqport {Path(args.artifact).name}"] = profile_seqport(args.artifact, args, folder)
        if args.genai:
            traces[f"genai {Path(args.genai).name}"] = profile_genai(args.genai, args, folder)
    print(f"batch {args.batch}, {args.input_tokens} prompt tokens, {args.new_tokens} new, {args.threads} threads")
    for name, path in traces.items():
        print(f"  {name}: {path}")
    print(render({name: read_trace(path, steps) for name, path in traces.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
