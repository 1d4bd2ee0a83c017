"""What the decoder's greedy head costs inside onnxruntime, alone: ArgMax, TopK(k=1), blocked argmax.

    python benchmarks/greedy_head_cost.py [--vocab 49152] [--rows 1,8] [--threads 1,2] [--repeats 300]

Builds export/greedy_head.py's head as it was (ArgMax), with TopK (k=1) over the row (a vocabulary
that is not a multiple of its BLOCK) and as the export now builds it for SmolLM2 (the blocked
argmax: ReduceMax per block, then TopK) over a (N, 1, V) logits input, checks all three choose
the same ids, and times `session.run` of each,
alternated call by call, beside numpy's argmax of the same rows (what a host loop would pay).
Prints the minimum and the 25th percentile in µs: minima are what to compare on a shared
machine. SmolLM2's vocabulary (49152) is the default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from seqport.export.greedy_head import GREEDY_IDS, GREEDY_LOGPROBS, append_head


def head_session(vocab: int, threads: int, kind: str) -> ort.InferenceSession:
    """The head over graph input `logits` (N, 1, V): kind "ArgMax" (TopK swapped back for ArgMax),
    "TopK" (over the whole row) or "blocked" (the blocked argmax; needs V a multiple of BLOCK)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, vocab])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, vocab])],
    )
    append_head(graph, "logits", "float32", vocab if kind == "blocked" else None)
    if kind == "ArgMax":  # the head before: ArgMax(last, axis=-1, keepdims=1) where TopK is now
        nodes = [
            helper.make_node("ArgMax", [n.input[0]], [n.output[1]], axis=-1, keepdims=1) if n.op_type == "TopK" else n
            for n in graph.node
        ]
        del graph.node[:]
        graph.node.extend(nodes)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _timed(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e6)
    return sorted(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--rows", default="1,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f}; µs per run, min / p25")
    for rows in map(int, args.rows.split(",")):
        logits = np.random.default_rng(0).normal(0, 4, size=(rows, 1, args.vocab)).astype(np.float32)
        for threads in map(int, args.threads.split(",")):
            heads = {name: head_session(args.vocab, threads, name) for name in ("ArgMax", "TopK", "blocked")}
            outs = {name: s.run([GREEDY_IDS, GREEDY_LOGPROBS], {"x": logits}) for name, s in heads.items()}
            assert all(np.array_equal(outs["TopK"][0], o[0]) for o in outs.values()), "the heads chose different ids"
            times = {name: [] for name in heads}
            for _ in range(args.repeats):  # alternated call by call
                for name, s in heads.items():
                    times[name] += _timed(lambda s=s, x=logits: s.run(None, {"x": x}), 1)
            times["numpy argmax"] = _timed(lambda x=logits: x[:, -1, :].argmax(-1), args.repeats)
            cells = [f"{name} {min(t):.0f} / {sorted(t)[len(t) // 4]:.0f}" for name, t in times.items()]
            print(f"rows {rows}, {threads} thread(s): " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
