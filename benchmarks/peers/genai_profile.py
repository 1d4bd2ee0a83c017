"""onnxruntime-genai with onnxruntime's profiler on: one greedy generation, the trace's path printed.

    .venv-genai/bin/python benchmarks/peers/genai_profile.py GENAI_DIR OUT_DIR BATCH INPUT NEW THREADS

GENAI_DIR is a model builder folder (read only): OUT_DIR gets links to its files and a copy of
its genai_config.json whose decoder session options set `intra_op_num_threads` and
`enable_profiling` (a file prefix under OUT_DIR). Prompts are BATCH rows of INPUT random ids
(seed 0, as benchmarks/op_profile.py's seqport side); a warm-up of 4 tokens, then exactly NEW
tokens (max_length = min_length = INPUT + NEW). onnxruntime writes the trace when the session
closes; its path is the last line printed. Runs in GenAI's venv: stdlib, numpy, onnxruntime_genai.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _profiled_copy(source: Path, out: Path, threads: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != "genai_config.json" and not (out / item.name).exists():
            (out / item.name).symlink_to(item.resolve())
    config = json.loads((source / "genai_config.json").read_text())
    options = config["model"]["decoder"]["session_options"]
    options["intra_op_num_threads"] = threads
    options["enable_profiling"] = str(out / "genai")
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> int:
    source, out, batch, length, new, threads = sys.argv[1:7]
    import onnxruntime_genai as og

    folder = _profiled_copy(Path(source), Path(out), int(threads))
    model = og.Model(str(folder))
    ids = np.random.default_rng(0).integers(100, 49000, size=(int(batch), int(length))).astype(np.int32)

    def generate(model, n: int) -> None:
        params = og.GeneratorParams(model)
        total = ids.shape[1] + n
        params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=ids.shape[0])
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()

    generate(model, 4)
    generate(model, int(new))
    del model  # the session closes and writes its trace
    traces = sorted(folder.glob("genai*.json"), key=lambda p: p.stat().st_mtime)
    print(traces[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
