"""`seqport export --dtype fp16`: weights and activations in float16, gated on greedy agreement.

onnxruntime's `convert_float_to_float16` rewrites every float initializer and operator to
float16 (its op block list stays float32) with `keep_io_types=True`: graph inputs and outputs
stay float32 behind Cast nodes, so the manifest's contract (and every engine that reads it) is
unchanged; inside, the matmuls, attention and norms run in half precision.

The fp16 components are compared with the fp32 ones on quantize.py's fixed inputs: greedy
token agreement (teacher-forced on fp32's output) is the gate, MIN_AGREEMENT; the largest logit
difference (information; validate.TOLERANCES["float16"] is the per-step parity tolerance) and
the rate of identical free-running outputs are recorded in the manifest's `quantization`
section with method "fp16".

T5 is refused: its feed-forward activations overflow float16 (the reason HF keeps T5's
`wo` in float32, transformers#9295); export T5 in fp32.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from seqport.engine.api import load
from seqport.engine.errors import ExportError, ParityError
from seqport.engine.manifest import Manifest
from seqport.export.quantize import MIN_AGREEMENT, SENTENCES, _figures, _fit, _stage, _with_files, gate_record
from seqport.export.validate import TOLERANCES

logger = logging.getLogger(__name__)
DTYPES = ("fp32", "fp16")
#: families whose activations overflow float16 (see the module docstring).
FP32_ONLY = ("t5", "mt5", "umt5")


def fp16_artifact(folder: Path, manifest: Manifest, min_agreement: float = MIN_AGREEMENT) -> Manifest:
    """Replace every component in `folder` by its float16 version once it passes the gate.

    Returns:
        The manifest with the fp16 components' hashes and a `quantization` section (method "fp16").

    Raises:
        ExportError: a family that must stay fp32, an architecture without a generation check,
            or a graph the converter cannot handle.
        ParityError: fp16 agrees with fp32 on fewer greedy tokens than min_agreement.
    """
    if manifest.family in FP32_ONLY:
        raise ExportError(
            f"{manifest.family} activations overflow float16 (T5's feed-forward outputs exceed 65504); "
            "export it with --dtype fp32"
        )
    if manifest.architecture not in ("encoder-decoder", "decoder-only"):
        raise ExportError(f"--dtype fp16 is validated by greedy agreement; export {manifest.architecture} in fp32")
    stage = Path(tempfile.mkdtemp(prefix=".fp16-", dir=folder))
    try:
        files, nodes = _convert(folder, manifest, stage / "fp16")
        converted = _half_kv_contract(_with_files(manifest, files))
        reference = load(_stage(folder, manifest, stage / "fp32", {}))
        candidate = load(_stage(folder, converted, stage / "fp16", files))
        figures = _figures(reference, candidate, _fit(reference.input_ids(SENTENCES), manifest))
        if figures.token_agreement < min_agreement:
            raise ParityError(
                f"fp16 components agree with fp32 on {figures.token_agreement:.3f} of greedy tokens; the gate "
                f"is {min_agreement:g}. Keep this model in fp32 (export with --dtype fp32)."
            )
        sizes = {n: [(folder / c.file).stat().st_size, files[n].stat().st_size] for n, c in manifest.components.items()}
        for name, path in files.items():
            os.replace(path, folder / manifest.components[name].file)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    worst = max((d for table in figures.max_abs_diff.values() for d in table.values()), default=0.0)
    if worst > TOLERANCES["float16"]:
        logger.info("fp16 logits differ from fp32 by up to %.4g (per-step tolerance %g)", worst, TOLERANCES["float16"])
    record = dataclasses.replace(gate_record("fp16", False, ["*"], nodes, figures, min_agreement), bytes=sizes)
    return dataclasses.replace(converted, quantization=record)


#: logical I/O names of the KV cache, which crosses the graph boundary in float16.
KV_PREFIXES = ("past_key.", "past_value.", "present_key.", "present_value.", "cross_key.", "cross_value.")


def _is_kv(logical: str) -> bool:
    return logical.startswith(KV_PREFIXES)


def _float32_io(manifest: Manifest, name: str) -> list[str]:
    """Graph names of a component's float I/O that stay float32: everything but the KV cache
    (logits, hidden states), so only K/V change dtype at the boundary."""
    component = manifest.components[name]
    specs = {**component.inputs, **component.outputs}
    return [spec.name for logical, spec in specs.items() if spec.dtype == "float32" and not _is_kv(logical)]


def _half_kv_contract(manifest: Manifest) -> Manifest:
    """The manifest of float16 components: K/V specs and kv.dtype become float16."""

    def half(specs: dict) -> dict:
        return {k: dataclasses.replace(v, dtype="float16") if _is_kv(k) else v for k, v in specs.items()}

    components = {
        name: dataclasses.replace(c, inputs=half(c.inputs), outputs=half(c.outputs))
        for name, c in manifest.components.items()
    }
    return dataclasses.replace(manifest, components=components, kv=dataclasses.replace(manifest.kv, dtype="float16"))


def _convert(folder: Path, manifest: Manifest, out: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """Each component converted to float16, its K/V I/O too (the cache is half the memory and a
    preallocated buffer is written in place, not through a Cast copy), other float I/O kept
    float32; per component the float16 node count."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out.mkdir(parents=True)
    files, nodes = {}, {}
    for name, component in manifest.components.items():
        model = onnx.load(str(folder / component.file))
        keep = _float32_io(manifest, name)
        try:
            half = convert_float_to_float16(model, keep_io_types=keep, disable_shape_infer=True)
        except Exception as exc:  # the converter raises many types on graphs it cannot handle
            raise ExportError(f"onnxruntime could not convert {component.file} to float16: {exc}") from exc
        files[name] = out / component.file
        onnx.save(half, str(files[name]))
        nodes[name] = sum(node.op_type != "Cast" for node in half.graph.node)
    return files, nodes
