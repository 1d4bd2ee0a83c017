"""transformers + PyTorch eager `generate()`: the baseline every ratio is taken against.

    python benchmarks/peers/run_pytorch.py PLAN.json

PLAN: common plan fields + {"hf", "architecture", "pad_id"}. torch.set_num_threads(threads),
greedy, min_new_tokens = max_new_tokens = N, under torch.inference_mode().
"""

from __future__ import annotations

import time

from common import read_plan, run


def main() -> None:
    plan = read_plan()
    start = time.perf_counter()
    import torch
    import transformers

    import_s = time.perf_counter() - start

    def load():
        torch.set_num_threads(plan["threads"])
        torch.set_num_interop_threads(1)
        seq2seq = plan["architecture"] == "encoder-decoder"
        auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
        model = auto.from_pretrained(plan["hf"]).eval()

        def greedy(ids, n: int):
            """transformers greedy search, exactly n new tokens, every row unpadded."""
            with torch.inference_mode():
                return model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    pad_token_id=plan["pad_id"],
                )

        def generate(inputs: list[list[int]], n: int) -> list[int]:
            ids = torch.tensor(inputs)  # (B, L): same length rows, no padding
            out = greedy(ids, n)
            prefix = 1 if seq2seq else ids.shape[1]  # decoder start token / prompt
            return [out.shape[1] - prefix] * out.shape[0]

        def greedy_ids(prompt: list[int], n: int) -> list[int]:
            ids = torch.tensor([prompt])  # (1, P)
            return greedy(ids, n)[0, (1 if seq2seq else ids.shape[1]) :].tolist()

        return generate, greedy_ids

    run(load, plan, ("torch", "transformers", "numpy"), import_s)


if __name__ == "__main__":
    main()
