"""Semantic checks of a manifest that fits the schema: allowed values and cross-field rules.

engine/manifest.py builds the dataclasses from JSON (engine/json_binding.py); the rules here
run on the built manifest and return problems as "$.json.path: what is wrong", so that every
problem is listed in one ManifestError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seqport.engine.errors import ManifestError

if TYPE_CHECKING:
    from seqport.engine.manifest import Manifest, SharedWeights

ARCHITECTURES = ("encoder-decoder", "decoder-only", "encoder-only")
DTYPES = ("int64", "int32", "float32", "float16", "bool")
#: pooling modes of encoder-only embeddings, in the order they are concatenated (sentence-transformers).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
#: how the decoder's self-attention cache grows: concatenated per step, or written into buffers
#: sized for the whole request (past and present are then the same (B, H_kv, C, D) buffer).
KV_ALLOCATIONS = ("growing", "preallocated")


def check_version(data: Any, known: int) -> None:
    """Raises ManifestError unless `data` is an object of format version `known` (this engine's)."""
    if not isinstance(data, dict):
        raise ManifestError("seqport.json must hold a JSON object. Re-export the model.")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError("seqport.json has no integer format_version. Re-export the model.")
    if version > known:
        exporter = data.get("provenance", {}).get("exporter", "an unknown exporter")
        raise ManifestError(
            f"seqport.json has format_version {version}, exported by {exporter}; this engine "
            f"reads format_version {known}. Upgrade seqport, or re-export with this one."
        )
    if version < known:
        raise ManifestError(
            f"seqport.json has format_version {version}, older than this engine's "
            f"{known}, which no longer reads it. Re-export the model."
        )


def semantic_problems(m: Manifest) -> list[str]:
    """Every rule a schema-valid manifest breaks, as "$.path: problem" lines."""
    problems = []
    if m.architecture not in ARCHITECTURES:
        problems.append(f"$.architecture: {m.architecture!r} is not one of {ARCHITECTURES}")
    for cname, comp in m.components.items():
        for kind, specs in (("inputs", comp.inputs), ("outputs", comp.outputs)):
            for logical, spec in specs.items():
                if spec.dtype not in DTYPES:
                    problems.append(
                        f"$.components.{cname}.{kind}.{logical}.dtype: {spec.dtype!r} is not one of {DTYPES}"
                    )
    if m.architecture != "encoder-only" and m.kv is None:
        problems.append(f"$.kv: a {m.architecture} artifact needs its KV geometry")
    if m.kv is not None and m.kv.allocation not in KV_ALLOCATIONS:
        problems.append(f"$.kv.allocation: {m.kv.allocation!r} is not one of {KV_ALLOCATIONS}")
    decoder = m.components.get("decoder")
    if m.kv is not None and decoder is not None:
        takes_position = "cache_position" in decoder.inputs
        if takes_position != (m.kv.allocation == "preallocated"):
            problems.append(
                f"$.components.decoder.inputs: a {m.kv.allocation} cache "
                + ("needs" if not takes_position else "has no")
                + " cache_position input"
            )
    if not m.special_ids.eos and m.architecture != "encoder-only":
        problems.append("$.special_ids.eos: at least one end-of-sequence id is needed")
    if m.architecture == "encoder-only":
        problems.extend(_encoder_only_problems(m))
    if m.shared_weights is not None:
        problems.extend(_shared_weights_problems(m.shared_weights, set(m.components)))
    return problems


def _shared_weights_problems(shared: SharedWeights, components: set[str]) -> list[str]:
    problems = []
    for name, tensor in shared.tensors.items():
        path = f"$.shared_weights.tensors.{name}"
        if tensor.dtype not in DTYPES:
            problems.append(f"{path}.dtype: {tensor.dtype!r} is not one of {DTYPES}")
        if tensor.offset < 0 or any(d < 0 for d in tensor.shape):
            problems.append(f"{path}: offset and dimensions must be >= 0")
        unknown = [c for c in tensor.components if c not in components]
        if unknown or not tensor.components:
            problems.append(f"{path}.components: {tensor.components} must name components of {sorted(components)}")
    return problems


def _encoder_only_problems(m: Manifest) -> list[str]:
    """An encoder-only artifact has one `encoder` that outputs hidden states (with pooling) or logits (with labels)."""
    if "encoder" not in m.components:
        return ["$.components: an encoder-only artifact needs an 'encoder' component"]
    outputs = set(m.components["encoder"].outputs) & {"last_hidden_state", "logits"}
    if len(outputs) != 1:
        return ["$.components.encoder.outputs: need exactly one of 'last_hidden_state' or 'logits'"]
    problems = []
    if "last_hidden_state" in outputs and m.pooling is None:
        problems.append("$.pooling: an encoder-only feature-extraction artifact needs its pooling")
    if m.pooling is not None:
        unknown = [mode for mode in m.pooling.modes if mode not in POOLING_MODES]
        if unknown or not m.pooling.modes or len(set(m.pooling.modes)) != len(m.pooling.modes):
            problems.append(f"$.pooling.modes: {m.pooling.modes} must be distinct values of {POOLING_MODES}")
    if "logits" in outputs and not m.labels:
        problems.append("$.labels: an encoder-only classification artifact needs one label per logit")
    return problems
