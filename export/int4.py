"""`seqport export --quantize int4`: blockwise int4 weights (onnxruntime's MatMulNBits), gated.

onnxruntime's MatMulNBitsQuantizer stores each constant MatMul weight (K, N) as 4-bit integers
in blocks of `block_size` along K, with one float scale per block (and a zero point when
asymmetric), and replaces the MatMul with com.microsoft.MatMulNBits, which dequantizes on the
fly; `accuracy_level` picks the kernel's compute type (4: int8 activations, the fastest on CPUs
with VNNI; 0: the kernel decides; 1 fp32). Activations stay float, so only weight reads shrink,
which is what bounds a decode step at batch 1. The tied vocabulary projection is turned into
a MatMul on its own transposed copy first (export/quantize.py), so it can take int4 too
(`Int4Options.projection`), while the token Gather keeps reading the float table.

The gate is int8's (export/quantize.py): greedy token agreement with the fp32 components on
fixed English inputs, teacher-forced, at least MIN_AGREEMENT; the manifest's `quantization`
records the settings in `method` and the figures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from seqport.engine.api import load
from seqport.engine.errors import ExportError, ParityError
from seqport.engine.manifest import Manifest, Quantization
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


@dataclasses.dataclass(frozen=True)
class Int4Options:
    """Settings of `--quantize int4`.

    Args:
        block_size: weights per scale along the input dimension, a power of 2 >= 16.
        accuracy_level: MatMulNBits compute type, one of ACCURACY_LEVELS (4: int8 activations).
        projection: quantize the vocabulary projection too (False keeps it float32).
        symmetric: scales only (True) or scales and zero points (False).

    Raises:
        ExportError: a block size or accuracy level onnxruntime does not take.
    """

    block_size: int = 32
    accuracy_level: int = 4
    projection: bool = True
    symmetric: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            problems.append(f"--block-size must be a power of 2 >= 16, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            problems.append(f"--accuracy-level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if problems:
            raise ExportError("; ".join(problems))

    @property
    def method(self) -> str:
        """The manifest's quantization.method, with every setting that changes the weights."""
        kind = "symmetric" if self.symmetric else "asymmetric"
        projection = "int4" if self.projection else "float32"
        return (
            f"int4-blockwise block_size={self.block_size} accuracy_level={self.accuracy_level} {kind} "
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
    """Each prepared component quantized to MatMulNBits in `out`; per component, the node count."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    out.mkdir(parents=True)
    files, nodes = {}, {}
    for name, component in manifest.components.items():
        model, target = onnx.load(str(sources[name])), out / component.file
        excluded = [] if options.projection else _projections(model, manifest.vocab_size)
        try:
            quantizer = MatMulNBitsQuantizer(
                model,
                bits=4,
                block_size=options.block_size,
                is_symmetric=options.symmetric,
                accuracy_level=options.accuracy_level or None,
                nodes_to_exclude=excluded,
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
        except Exception as exc:  # the quantizer raises many types on graphs it cannot handle
            raise ExportError(f"onnxruntime could not quantize {component.file} to int4: {exc}") from exc
        ops = Counter(node.op_type for node in onnx.load(str(target), load_external_data=False).graph.node)
        files[name], nodes[name] = target, ops["MatMulNBits"]
    return files, nodes


def _projections(model: onnx.ModelProto, vocab_size: int) -> list[str]:
    """Names of the MatMuls whose constant weight is (d, V): the vocabulary projection."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    weights = {node.name: shapes.get(node.input[1], []) for node in model.graph.node if node.op_type == "MatMul"}
    return [name for name, shape in weights.items() if len(shape) == 2 and shape[1] == vocab_size]
