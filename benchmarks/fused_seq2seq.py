"""Fused (MultiHeadAttention) vs portable attention on an encoder-decoder, side by side (issue #16).

Two exports of the same checkpoint (default: the bundled translator), `--attention portable`
and `--attention fused`, made once into --build. Both run the same engine loop alternately on
the same sources: exactly N new tokens (greedy) at each batch size; tokens/s is the median of
the rounds, with the fused/portable ratio and the load average beside it. The ids must agree.

    python benchmarks/fused_seq2seq.py --batch-sizes 1,8 --new-tokens 32 --threads 1 --rounds 11

Run it on a quiet machine (docs/benchmarks.md); on a shared one only the ratio means anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import seqport.engine as sp
from seqport.engine.runtime import RuntimeOptions

MODES = ("portable", "fused")


def _artifacts(checkpoint: Path, build: Path) -> dict[str, Path]:
    from seqport.export.pipeline import export_model  # torch: only to make the two exports

    folders = {mode: build / mode for mode in MODES}
    for mode, folder in folders.items():
        if not (folder / "seqport.json").is_file():
            export_model(checkpoint, folder, progress=False, attention=mode)
    return folders


def _rate(model, sources: list[str], new: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    results = model.generate(sources, max_new_tokens=new, min_new_tokens=new, num_beams=1, do_sample=False)
    return sum(len(r.ids) for r in results) / (time.perf_counter() - start), [r.ids for r in results]


def main(argv: list[str] | None = None) -> int:
    from seqport.export.bundled import bundled_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled translator")
    parser.add_argument("--build", type=Path, default=Path("build/fused_seq2seq"))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or bundled_checkpoint()
    options = RuntimeOptions(intra_op_threads=args.threads, inter_op_threads=1)
    models = {mode: sp.load(folder, options=options) for mode, folder in _artifacts(checkpoint, args.build).items()}
    tsv = bundled_checkpoint() / "test_sentences.tsv"
    lines = [line.split("\t")[0] for line in tsv.read_text(encoding="utf-8").splitlines()]
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        sources = lines[:batch]
        ids = {mode: _rate(models[mode], sources, args.new_tokens)[1] for mode in MODES}  # warm-up
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                rates[mode].append(_rate(models[mode], sources, args.new_tokens)[0])
        med = {mode: statistics.median(values) for mode, values in rates.items()}
        print(
            f"batch {batch}: portable {med['portable']:.1f} tok/s, fused {med['fused']:.1f} tok/s, "
            f"fused/portable {med['fused'] / med['portable']:.3f}, same ids {ids['portable'] == ids['fused']}, "
            f"load {os.getloadavg()[0]:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
