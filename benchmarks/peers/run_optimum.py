"""Optimum's ORTModelForSeq2SeqLM / ORTModelForCausalLM, run from Optimum's own venv.

    .venv-optimum/bin/python benchmarks/peers/run_optimum.py PLAN.json

optimum-onnx needs transformers < 4.58, so this runner lives in a separate virtual environment
(compare.py --setup-optimum-venv) without seqport: it imports only common.py beside it.

PLAN: common plan fields + {"hf", "onnx", "architecture", "pad_id"}, and "export": true to export
`hf` to `onnx` with Optimum (ORTModel...from_pretrained(export=True).save_pretrained) instead of
measuring. Measuring loads `onnx` with intra_op_num_threads = threads (inter-op 1, sequential
execution, graph optimization ORT_ENABLE_ALL: onnxruntime's defaults) and calls `generate()` with
greedy, min_new_tokens = max_new_tokens = N.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import emit, read_plan, run

NAMES = ("optimum", "optimum-onnx", "onnxruntime", "transformers", "torch", "numpy")


def _model_class(architecture: str):
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

    return ORTModelForSeq2SeqLM if architecture == "encoder-decoder" else ORTModelForCausalLM


def export(plan: dict) -> None:
    start = time.perf_counter()
    model = _model_class(plan["architecture"]).from_pretrained(plan["hf"], export=True)
    model.save_pretrained(plan["onnx"])
    files = sorted(p.name for p in Path(plan["onnx"]).glob("*.onnx"))
    emit({"export_s": round(time.perf_counter() - start, 1), "files": files})


def main() -> None:
    plan = read_plan()
    if plan.get("export"):
        export(plan)
        return

    start = time.perf_counter()
    import onnxruntime
    import torch

    model_class = _model_class(plan["architecture"])
    import_s = time.perf_counter() - start

    def load():
        torch.set_num_threads(plan["threads"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = plan["threads"]
        options.inter_op_num_threads = 1
        model = model_class.from_pretrained(plan["onnx"], session_options=options, provider="CPUExecutionProvider")

        def generate(inputs: list[list[int]], n: int) -> list[int]:
            ids = torch.tensor(inputs)  # (B, L): same length rows, no padding
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                num_beams=1,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=plan["pad_id"],
            )
            prefix = 1 if plan["architecture"] == "encoder-decoder" else ids.shape[1]
            return [out.shape[1] - prefix] * out.shape[0]

        return generate

    run(load, plan, NAMES, import_s)


if __name__ == "__main__":
    main()
