"""onnxruntime-genai (its C++ loop over its model builder's graph), exactly N new tokens.

    .venv-genai/bin/python benchmarks/peers/run_genai.py PLAN.json

PLAN: common plan fields + {"genai"}: a folder written by `python -m
onnxruntime_genai.models.builder` whose genai_config.json already sets the decoder's
intra_op_num_threads (benchmarks/smollm2.py does). Greedy; max_length = min_length = P + N, so
exactly N tokens come out and the shared past/present buffers are sized for this request, not
for the config's context length (peers.md). Runs in its own venv: stdlib + numpy + onnxruntime_genai.
The in-call decode timing (common.py's `split`): the first new token is out when the first
generate_next_token after append_tokens (the prefill) returns.
"""

from __future__ import annotations

import time

import numpy as np
from common import read_plan, run


def main() -> None:
    plan = read_plan()
    start = time.perf_counter()
    import onnxruntime_genai as og

    import_s = time.perf_counter() - start

    def load():
        model = og.Model(plan["genai"])

        def tokens(inputs: list[list[int]], n: int, marks: list[float] | None = None) -> np.ndarray:
            ids = np.asarray(inputs, dtype=np.int32)  # (B, P): same-length rows, no padding
            params = og.GeneratorParams(model)
            total = ids.shape[1] + n
            params.set_search_options(
                max_length=total, min_length=total, do_sample=False, batch_size=ids.shape[0]
            )
            generator = og.Generator(model, params)
            generator.append_tokens(ids)
            while not generator.is_done():
                generator.generate_next_token()
                if marks is not None and not marks:
                    marks.append(time.perf_counter())  # the first new token is out
            return np.stack([np.asarray(generator.get_sequence(i))[ids.shape[1] :] for i in range(ids.shape[0])])

        def generate(inputs: list[list[int]], n: int) -> list[int]:
            return [len(row) for row in tokens(inputs, n)]

        def greedy_ids(prompt: list[int], n: int) -> list[int]:
            return tokens([prompt], n)[0].tolist()

        def split(inputs: list[list[int]], n: int) -> tuple[float, float]:
            start, marks = time.perf_counter(), []
            counts = [len(row) for row in tokens(inputs, n, marks)]
            if counts != [n] * len(inputs):
                raise RuntimeError(f"asked for exactly {n} new tokens per input, got {counts}")
            return marks[0] - start, time.perf_counter() - start

        return generate, greedy_ids, split

    run(load, plan, ("onnxruntime-genai", "onnxruntime", "numpy"), import_s)


if __name__ == "__main__":
    main()
