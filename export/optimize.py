"""`seqport export --optimize`: onnxruntime transformer fusions applied offline, re-validated.

onnxruntime's transformer optimizer rewrites known subgraphs into fused contrib operators
(LayerNormalization + residual Add → SkipLayerNormalization, Gelu/FastGelu, Attention /
MultiHeadAttention where the pattern matches). Which fusions apply depends on how the graph was
written; the fused operator counts are recorded per component in the manifest, and the fused
components are validated against PyTorch again with the export's cases and tolerances.

Graph inputs and outputs keep their names, so the artifact's contract is unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path

import onnx

from seqport.engine.errors import ExportError
from seqport.engine.manifest import Component, Manifest, Optimization, Validation, sha256_of

logger = logging.getLogger(__name__)

#: manifest family -> onnxruntime.transformers optimizer model_type (its set of fusion patterns).
MODEL_TYPES = {
    "seqport-transformer": "bart",
    "bart": "bart",
    "marian": "bart",
    "t5": "t5",
    "gpt2": "gpt2",
}
DEFAULT_MODEL_TYPE = "bert"  # encoders and other decoders: LayerNorm/RMSNorm, Gelu, attention patterns


def _has_biasless_gemm(path: Path) -> bool:
    """Whether a Gemm has no C input: the exporter drops all-zero biases (randomly initialised
    GPT-2 checkpoints), and onnxruntime's gpt2 postprocess, which rewrites each Gemm after a
    LayerNorm or FastGelu into MatMul + Add, reads `gemm.input[2]` unconditionally
    (IndexError: list index out of range)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type == "Gemm" and len(node.input) < 3 for node in graph.node)


def choose_model_type(family: str, paths: list[Path]) -> str:
    """The optimizer's pattern set for this family, or "bert" where gpt2's would crash.

    On the dynamo-exported GPT-2 graph the gpt2 set fuses what the bert set fuses (its GPT attention
    patterns match none of it) plus that Gemm rewrite, so "bert" loses no fused operator.
    """
    model_type = MODEL_TYPES.get(family, DEFAULT_MODEL_TYPE)
    if model_type == "gpt2" and any(_has_biasless_gemm(path) for path in paths):
        logger.warning(
            "a Gemm without bias (all-zero biases dropped by the exporter) crashes onnxruntime's gpt2 "
            "postprocess; using the %s patterns instead",
            DEFAULT_MODEL_TYPE,
        )
        return DEFAULT_MODEL_TYPE
    return model_type


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def _op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def fuse_component(path: Path, model_type: str, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Apply the optimizer's fusions to one ONNX file in place.

    Returns:
        Each fused operator the optimizer created and how many (operators already in the graph
        before, such as an exported LayerNormalization, are not counted).

    Raises:
        ExportError: the optimizer failed, or the fused graph renamed an input or output.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    before_io = _io_names(path)
    before = _op_counts(onnx.load(str(path)))
    try:
        optimized = optimize_model(
            str(path),
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=FusionOptions(model_type),
            opt_level=0,  # python fusions only: portable across providers, no hardware-specific layouts
        )
    except Exception as exc:  # the optimizer raises many types on patterns it half-matches
        raise ExportError(f"onnxruntime's optimizer failed on {path.name}: {exc}") from exc
    stats = optimized.get_fused_operator_statistics()
    after = _op_counts(optimized.model)
    fused = {op: after[op] - before[op] for op in stats if after[op] > before[op]}
    optimized.save_model_to_file(str(path))
    if _io_names(path) != before_io:
        raise ExportError(f"fusing {path.name} changed its inputs or outputs; export without --optimize")
    return dict(sorted(fused.items()))


def optimize_artifact(adapter, folder: Path, manifest: Manifest) -> Manifest:
    """Fuse every component of the artifact in `folder` in place and re-validate it.

    Args:
        adapter: the export adapter (PyTorch model) the artifact was exported from.
        folder: the artifact folder; its component files are rewritten.
        manifest: the manifest of the fp32 export (not yet re-saved by this function).

    Returns:
        The manifest with updated component hashes and an `optimization` section.

    Raises:
        ExportError: a fusion failed or changed the contract.
        ParityError: a fused component disagrees with PyTorch beyond the export's tolerance.
    """
    from onnxruntime import __version__ as ort_version

    model_type = choose_model_type(manifest.family, [folder / c.file for c in manifest.components.values()])
    num_heads = manifest.kv.num_heads if manifest.kv else 0  # 0: the optimizer reads it from the graph
    hidden = num_heads * manifest.kv.head_dim if manifest.kv else 0
    components: dict[str, Component] = {}
    fusions: dict[str, dict[str, int]] = {}
    for name, component in manifest.components.items():
        path = folder / component.file
        fusions[name] = fuse_component(path, model_type, num_heads, hidden)
        components[name] = dataclasses.replace(component, sha256=sha256_of(path))
        logger.info("fused %s: %s", name, fusions[name] or "no pattern matched")
    validation = revalidate(adapter, folder, dataclasses.replace(manifest, components=components))
    optimization = Optimization(
        tool=f"onnxruntime.transformers {ort_version}", model_type=model_type, fusions=fusions, validation=validation
    )
    return dataclasses.replace(manifest, components=components, optimization=optimization)


def revalidate(adapter, folder: Path, manifest: Manifest) -> Validation:
    """The export's validation (same cases, same tolerances) on the components in `folder`.

    Raises:
        ParityError: a component disagrees with PyTorch beyond tolerance.
    """
    from seqport.export import validate as checks
    from seqport.export.text_check import real_text_check

    if manifest.architecture == "encoder-only":
        from seqport.export.encoder_only import validate_encoder_only

        return validate_encoder_only(adapter, folder, manifest.components["encoder"], scale=manifest.validation.scale)
    kv, scale = manifest.kv, manifest.validation.scale
    fixed = {"num_kv_heads": kv.num_kv_heads, "head_dim": kv.head_dim, "vocab_size": manifest.vocab_size}
    tokenizer = folder / manifest.tokenizer.file
    tokenizer = tokenizer if manifest.validation.text is not None and tokenizer.is_file() else None
    if manifest.architecture == "decoder-only":
        return checks.validate_decoder_only(
            adapter,
            folder,
            manifest.components,
            fixed,
            allocation=kv.allocation,
            attention=manifest.attention,
            text_check=real_text_check(tokenizer, True, manifest.attention),
            scale=scale,
        )
    return checks.validate(
        adapter,
        folder,
        manifest.components,
        fixed,
        allocation=kv.allocation,
        text_check=real_text_check(tokenizer, False),
        scale=scale,
    )
