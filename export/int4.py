"""`seqport export --quantize int4`: blockwise int4 weights (onnxruntime's MatMulNBits), gated.

Each constant MatMul weight (K, N) is stored as 4-bit codes in blocks of `block_size` along K
with one float scale per block (export/blockwise.py), and the MatMul becomes onnxruntime's
com.microsoft.MatMulNBits, which dequantizes on the fly (export/matmul_nbits.py); the default
"offset" scheme keeps each block's exact minimum as a float offset added through block sums of
the activation, so weights that already lie on a 4-bit grid (a GGUF's Q4_1) come back exactly.
`accuracy_level` picks the kernel's compute type (4: int8 activations, the fastest on CPUs with
VNNI; 0: the kernel decides; 1 fp32). Activations stay float, so only weight reads shrink, which
is what bounds a decode step at batch 1. The tied vocabulary projection is turned into a MatMul
on its own transposed copy first (export/quantize.py), so it can be quantized too
(`Int4Options.projection`: int4, int8 blocks, or float), while the token Gather keeps reading
the float table.

The gate is int8's (export/quantize.py): greedy token agreement with the fp32 components on
fixed English inputs, teacher-forced, at least MIN_AGREEMENT; the manifest's `quantization`
records the settings in `method` and the figures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from seqport.engine.api import load
from seqport.engine.errors import ExportError, ParityError
from seqport.engine.manifest import Manifest, Quantization
from seqport.export.blockwise import SCHEMES
from seqport.export.matmul_nbits import Plan, rewrite
from seqport.export.quantize import (
    MIN_AGREEMENT,
    SENTENCES,
    _figures,
    _fit,
    _prepared,
    _stage,
    _with_files,
    gate_record,
)

#: MatMulNBits' accuracy levels (onnxruntime ContribOperators.md): 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
#: what the vocabulary projection becomes: 4-bit like the layers, 8-bit symmetric blocks, or float32
PROJECTIONS = ("int4", "int8", "float")


@dataclasses.dataclass(frozen=True)
class Int4Options:
    """Settings of `--quantize int4`.

    Args:
        block_size: weights per scale along the input dimension, a power of 2 >= 16.
        accuracy_level: MatMulNBits compute type, one of ACCURACY_LEVELS (4: int8 activations).
        projection: the vocabulary projection in int4 (like the layers), int8 (symmetric blocks of
            the same size) or float (kept float32); one of PROJECTIONS.
        scheme: the 4-bit blocks, one of blockwise.SCHEMES: "offset" (min/max with an exact float
            offset per block), "asymmetric" (integer zero points) or "symmetric" (scales only).

    Raises:
        ExportError: a block size, accuracy level, projection or scheme that is not supported.
    """

    block_size: int = 32
    accuracy_level: int = 4
    projection: str = "int8"
    scheme: str = "offset"

    def __post_init__(self) -> None:
        problems = []
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            problems.append(f"--block-size must be a power of 2 >= 16, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            problems.append(f"--accuracy-level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if self.projection not in PROJECTIONS:
            problems.append(f"--int4-projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if self.scheme not in SCHEMES:
            problems.append(f"--int4-scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if problems:
            raise ExportError("; ".join(problems))

    @property
    def method(self) -> str:
        """The manifest's quantization.method, with every setting that changes the weights."""
        projection = "float32" if self.projection == "float" else self.projection
        return (
            f"int4-blockwise block_size={self.block_size} accuracy_level={self.accuracy_level} {self.scheme} "
            f"projection={projection}"
        )


def quantize_int4_artifact(
    folder: Path, manifest: Manifest, options: Int4Options | None = None, min_agreement: float = MIN_AGREEMENT
) -> Manifest:
    """Replace every component in `folder` by its int4 version once it passes the gate.

    Args:
        folder: the artifact folder holding the fp32 (or fused) components.
        manifest: that artifact's manifest (the file itself need not be saved yet).
        options: block size, accuracy level, projection (defaults: Int4Options()).
        min_agreement: the token agreement the int4 components must reach.

    Returns:
        The manifest with the int4 components' hashes and a `quantization` section.

    Raises:
        ExportError: the architecture does not generate, or onnxruntime could not quantize.
        ParityError: the int4 components agree with fp32 on fewer tokens than min_agreement.
    """
    options = options or Int4Options()
    if manifest.architecture not in ("encoder-decoder", "decoder-only"):
        raise ExportError(
            f"--quantize int4 is validated by greedy token agreement, which a {manifest.architecture} "
            "artifact does not generate; export it without --quantize"
        )
    stage = Path(tempfile.mkdtemp(prefix=".quantize-", dir=folder))
    try:
        reference = load(_stage(folder, manifest, stage / "fp32", {}))
        sources = _fit(reference.input_ids(SENTENCES), manifest)
        prepared = _prepared(folder, manifest, stage / "prepared")
        files, nodes = _int4_files(prepared, manifest, stage / "int4", options)
        quantized = _with_files(manifest, files)
        figures = _figures(reference, load(_stage(folder, quantized, stage / "int4", files)), sources)
        if figures.token_agreement < min_agreement:
            raise ParityError(
                f"int4 components ({options.method}) agree with fp32 on {figures.token_agreement:.3f} of greedy "
                f"tokens; the gate is {min_agreement:g}. Try a smaller --block-size, keep the vocabulary "
                "projection in float, use --quantize int8, or keep this model in fp32."
            )
        sizes = {n: [(folder / c.file).stat().st_size, files[n].stat().st_size] for n, c in manifest.components.items()}
        for name, path in files.items():
            os.replace(path, folder / manifest.components[name].file)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    record = _record(options, figures, nodes, min_agreement, sizes)
    return dataclasses.replace(quantized, quantization=record)


def _record(options: Int4Options, figures, nodes: dict[str, int], min_agreement: float, sizes) -> Quantization:
    record = gate_record(options.method, False, ["MatMul"], nodes, figures, min_agreement)
    return dataclasses.replace(record, candidates={"int4": record.token_agreement}, bytes=sizes)


def _int4_files(sources: dict[str, Path], manifest: Manifest, out: Path, options: Int4Options):
    """Each prepared component with MatMulNBits in `out`; per component, the node count."""
    out.mkdir(parents=True)
    files, nodes = {}, {}
    for name, component in manifest.components.items():
        model, target = onnx.load(str(sources[name])), out / component.file
        try:
            plan_of = _planner(options, manifest.vocab_size)
            nodes[name] = rewrite(model, plan_of, options.block_size, options.accuracy_level)
            onnx.save(model, str(target))
        except ValueError as exc:
            raise ExportError(f"could not quantize {component.file} to int4: {exc}") from exc
        files[name] = target
    return files, nodes


def _planner(options: Int4Options, vocab_size: int):
    """(node, weight (K, N)) -> Plan: the vocabulary projection (N == V) as options.projection
    says, every other constant MatMul in 4-bit blocks of options.scheme."""
    layers, projection = Plan(4, options.scheme), {"int4": Plan(4, options.scheme), "int8": Plan(8, "symmetric")}

    def plan_of(node, weight) -> Plan | None:
        if weight.shape[1] == vocab_size:
            return projection.get(options.projection)
        return layers

    return plan_of
