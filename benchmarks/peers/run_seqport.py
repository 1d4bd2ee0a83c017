"""seqport through its public API: `seqport.engine.load` + `generate_ids`, exactly N new tokens.

    python benchmarks/peers/run_seqport.py PLAN.json

PLAN: common plan fields + {"artifact"}. intra_op_threads = plan["threads"]; greedy with
min_new_tokens = max_new_tokens = N, so EOS cannot end a row early. Torch-free process.
The in-call decode timing (common.py's `split`) goes through `stream`, whose first StepResult
is the first new token (stream also detokenizes each token: microseconds against a step).
"""

from __future__ import annotations

import time

from common import read_plan, run


def main() -> None:
    plan = read_plan()
    start = time.perf_counter()
    import onnxruntime  # noqa: F401  (the engine imports its backend at load: count it as an import)

    import seqport.engine as sp

    import_s = time.perf_counter() - start

    def load():
        model = sp.load(plan["artifact"], "cpu", options=sp.RuntimeOptions(intra_op_threads=plan["threads"]))

        def generate(inputs: list[list[int]], n: int) -> list[int]:
            config = sp.GenerationConfig(max_new_tokens=n, min_new_tokens=n)
            return [len(r.ids) + (r.finish_reason == "eos") for r in model.generate_ids(inputs, config)]

        def greedy_ids(prompt: list[int], n: int) -> list[int]:
            config = sp.GenerationConfig(max_new_tokens=n, min_new_tokens=n)
            result = model.generate_ids([prompt], config)[0]
            return list(result.ids) + [model.manifest.special_ids.eos[0]] * (result.finish_reason == "eos")

        def split(inputs: list[list[int]], n: int) -> tuple[float, float]:
            config = sp.GenerationConfig(max_new_tokens=n, min_new_tokens=n)  # generate's own config
            start, first, count = time.perf_counter(), None, 0
            for _ in model.stream(inputs, config):
                first = first or time.perf_counter()
                count += 1
            if count != n * len(inputs):
                raise RuntimeError(f"asked for exactly {n} new tokens per input, streamed {count}")
            return first - start, time.perf_counter() - start

        return generate, greedy_ids, split

    run(load, plan, ("seqport", "numpy", "onnxruntime", "tokenizers"), import_s)


if __name__ == "__main__":
    main()
