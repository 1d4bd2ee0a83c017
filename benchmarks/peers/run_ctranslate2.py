"""CTranslate2 Translator (encoder-decoder) or Generator (decoder-only), exactly N new tokens.

    python benchmarks/peers/run_ctranslate2.py PLAN.json

PLAN: common plan fields + {"ct2", "architecture", "compute_type"}. Ids are mapped to the
model's vocabulary tokens (one token per id, see shapes.py). intra_threads = threads,
inter_threads = 1; greedy (beam_size 1); Translator min_decoding_length = max_decoding_length
= N, Generator min_length = max_length = N with include_prompt_in_result=False; return_end_token
so an EOS in the last position still counts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import read_plan, run


def _vocabulary(folder: Path) -> list[str]:
    for name in ("shared_vocabulary.json", "target_vocabulary.json", "vocabulary.json"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise FileNotFoundError(f"no vocabulary file in {folder}")


def main() -> None:
    plan = read_plan()
    start = time.perf_counter()
    import ctranslate2

    import_s = time.perf_counter() - start

    def load():
        folder = Path(plan["ct2"])
        vocab = _vocabulary(folder)
        options = dict(device="cpu", compute_type=plan["compute_type"], intra_threads=plan["threads"], inter_threads=1)
        if plan["architecture"] == "encoder-decoder":
            model = ctranslate2.Translator(str(folder), **options)

            def generate(inputs: list[list[int]], n: int) -> list[int]:
                tokens = [[vocab[i] for i in row] for row in inputs]
                results = model.translate_batch(
                    tokens, beam_size=1, max_decoding_length=n, min_decoding_length=n, return_end_token=True
                )
                return [len(r.hypotheses[0]) for r in results]

        else:
            model = ctranslate2.Generator(str(folder), **options)

            def generate(inputs: list[list[int]], n: int) -> list[int]:
                tokens = [[vocab[i] for i in row] for row in inputs]
                results = model.generate_batch(
                    tokens,
                    beam_size=1,
                    max_length=n,
                    min_length=n,
                    include_prompt_in_result=False,
                    return_end_token=True,
                )
                return [len(r.sequences_ids[0]) for r in results]

        return generate

    run(load, plan, ("ctranslate2", "numpy"), import_s)


if __name__ == "__main__":
    main()
