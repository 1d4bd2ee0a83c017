"""int4 variants of an exported fp32 artifact without exporting again, for the LLM benchmark.

    python benchmarks/peers/quantize_llm.py FP32_ARTIFACT OUT [--block-size 32] [--accuracy-level 4]
        [--projection int4|int8|float] [--scheme offset|asymmetric|symmetric]

Copies the artifact, then runs the same step `seqport export --quantize int4` runs after its
fp32 export (export/int4.py: MatMulNBits, agreement measured against the fp32 components) and
the export's last step (weights external, shared tensors once). The agreement gate is 0: the
benchmark reports the agreement beside the speed. Measuring only.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import onnx

from seqport.engine.manifest import load_manifest, sha256_of
from seqport.export.blockwise import SCHEMES
from seqport.export.int4 import PROJECTIONS, Int4Options, quantize_int4_artifact
from seqport.export.pipeline import finish_artifact


def _inline(folder: Path):
    """Weights back inside each graph (the quantizer's pre-processing copies only the .onnx)."""
    manifest = load_manifest(folder)
    for component in manifest.components.values():
        model = onnx.load(str(folder / component.file))  # external data read in
        onnx.save(model, str(folder / component.file))
    components = {
        n: dataclasses.replace(c, data=None, sha256=sha256_of(folder / c.file)) for n, c in manifest.components.items()
    }
    return dataclasses.replace(manifest, components=components, shared_weights=None)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--block-size", type=int, default=Int4Options.block_size)
    p.add_argument("--accuracy-level", type=int, default=Int4Options.accuracy_level)
    p.add_argument("--projection", choices=list(PROJECTIONS), default=Int4Options.projection)
    p.add_argument("--scheme", choices=list(SCHEMES), default=Int4Options.scheme)
    args = p.parse_args()
    args.source, args.out = Path(args.source), Path(args.out)
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.source, args.out)
    options = Int4Options(args.block_size, args.accuracy_level, args.projection, args.scheme)
    manifest = quantize_int4_artifact(args.out, _inline(args.out), options, min_agreement=0.0)
    manifest = finish_artifact(args.out, manifest)
    print(f"{options.method}: token agreement {manifest.quantization.token_agreement}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
