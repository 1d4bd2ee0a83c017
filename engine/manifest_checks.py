"""Semantic checks of a manifest that fits the schema: allowed values and cross-field rules.

engine/manifest.py builds the dataclasses from JSON (engine/json_binding.py); the rules here
run on the built manifest and return problems as "$.json.path: what is wrong", so that every
problem is listed in one ManifestError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError, ManifestError

# The checks take the dataclasses of engine/manifest.py, which imports this module to run them
# in Manifest.from_dict; importing those types here (even for annotations) would close an
# import cycle, so the annotations below name them through aliases of Any.
Manifest = Any
SharedWeights = Any
TensorSpec = Any

ARCHITECTURES = ("encoder-decoder", "decoder-only", "encoder-only")
DTYPES = ("int64", "int32", "float32", "float16", "bool")
#: pooling modes of encoder-only embeddings, in the order they are concatenated (sentence-transformers).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
#: how the decoder's self-attention cache grows: concatenated per step, or written into buffers
#: sized for the whole request (past and present are then the same (B, H_kv, C, D) buffer).
KV_ALLOCATIONS = ("growing", "preallocated")
#: how the graphs compute attention: plain ONNX operators, or onnxruntime's contrib operators
#: (com.microsoft GroupQueryAttention), which only onnxruntime runs (`seqport export --attention`).
ATTENTION_MODES = ("portable", "fused")
KV_DTYPES = ("float32", "float16")
KV_LAYOUTS = ("BHSD",)
#: the largest vocabulary or position count a manifest may state (ids fit in int32).
MAX_SIZE = 2**31 - 1
#: the largest layer count, head count or head size: far above any model, low enough that
#: expanding "{i}" names per layer stays cheap.
MAX_GEOMETRY = 65536
_LAYER_KV = ("past_key.{i}", "past_value.{i}")
_PRESENT_KV = ("present_key.{i}", "present_value.{i}")
_CROSS_KV = ("cross_key.{i}", "cross_value.{i}")
#: per architecture and component: the logical (inputs, outputs) the engine feeds and reads.
#: The encoder-only outputs are checked in _encoder_only_problems (one of two).
REQUIRED_NAMES: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "encoder-decoder": {
        "encoder": (("input_ids", "attention_mask"), _CROSS_KV),
        "decoder": (
            ("input_ids", "encoder_attention_mask", "logits_positions", *_LAYER_KV, *_CROSS_KV),
            ("logits", *_PRESENT_KV),
        ),
    },
    "decoder-only": {
        "decoder": (
            ("input_ids", "attention_mask", "position_ids", "logits_positions", *_LAYER_KV),
            ("logits", *_PRESENT_KV),
        ),
    },
    "encoder-only": {"encoder": (("input_ids", "attention_mask"), ())},
}


def check_version(data: Any, known: int, oldest: int) -> None:
    """Raises ManifestError unless `data` is an object of a format version in [oldest, known]."""
    if not isinstance(data, dict):
        raise ManifestError("seqport.json must hold a JSON object. Re-export the model.")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError("seqport.json has no integer format_version. Re-export the model.")
    if version > known:
        provenance = data.get("provenance")
        exporter = provenance.get("exporter") if isinstance(provenance, dict) else None
        exporter = exporter if isinstance(exporter, str) and exporter else "an unknown exporter"
        raise ManifestError(
            f"seqport.json has format_version {version}, exported by {exporter}; this engine "
            f"reads format_version {known}. Upgrade seqport, or re-export with this one."
        )
    if version < oldest:
        raise ManifestError(
            f"seqport.json has format_version {version}, older than this engine's "
            f"{known}, which no longer reads it. Re-export the model."
        )


def semantic_problems(m: Manifest) -> list[str]:
    """Every rule a schema-valid manifest breaks, as "$.path: problem" lines."""
    problems = []
    if m.architecture not in ARCHITECTURES:
        problems.append(f"$.architecture: {m.architecture!r} is not one of {ARCHITECTURES}")
    if m.attention not in ATTENTION_MODES:
        problems.append(f"$.attention: {m.attention!r} is not one of {ATTENTION_MODES}")
    problems += _size_problems(m) + _component_problems(m) + _kv_problems(m) + _required_name_problems(m)
    problems += _state_problems(m)
    if 1 <= m.vocab_size <= MAX_SIZE:  # ids are only meaningful against a sane vocabulary
        problems += _special_id_problems(m) + _generation_problems(m)
    if m.architecture == "encoder-only":
        problems.extend(_encoder_only_problems(m))
    if m.shared_weights is not None:
        problems.extend(_shared_weights_problems(m.shared_weights, set(m.components)))
    return problems + _record_problems(m)


def check_files(m: Manifest, runtimes: dict[str, Any], tokenizer_vocab: int) -> None:
    """Check the manifest against the files it names, once they are loaded.

    Args:
        m: a manifest that passed semantic_problems.
        runtimes: component name → its loaded runtime (input_names, output_names).
        tokenizer_vocab: how many tokens the artifact's tokenizer has (added tokens included).

    Raises:
        ManifestError: a graph name the .onnx file does not have (or a graph input or output
            the manifest does not map), or a vocabulary smaller than the tokenizer's.
    """
    problems = []
    if tokenizer_vocab > m.vocab_size:
        problems.append(
            f"$.vocab_size: {m.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} tokens "
            f"({m.tokenizer.file}): ids it makes would lie outside the model's vocabulary"
        )
    layers = m.kv.num_layers if m.kv is not None else 0
    for cname, runtime in runtimes.items():
        comp = m.components[cname]
        sides = (("inputs", comp.inputs, runtime.input_names), ("outputs", comp.outputs, runtime.output_names))
        for kind, specs, names in sides:
            problems.extend(_graph_name_problems(f"$.components.{cname}.{kind}", comp.file, specs, names, layers))
    if problems:
        raise ManifestError(
            "seqport.json does not match the artifact's files:\n  - " + "\n  - ".join(problems)
            + "\nRe-export the model with `seqport export`."
        )


def _graph_name_problems(path: str, file: str, specs: dict, names: list[str], layers: int) -> list[str]:
    """Every graph name the manifest maps exists in the graph, and every graph name is mapped."""
    graph, mapped, problems = set(names), set(), []
    for logical, spec in specs.items():
        expected = [spec.name.replace("{i}", str(i)) for i in range(layers)] if "{i}" in spec.name else [spec.name]
        mapped.update(expected)
        missing = [name for name in expected if name not in graph]
        if missing:
            shown = "" if missing == [spec.name] else f" ({_some(missing)})"
            problems.append(f"{path}.{logical}.name: {spec.name!r}{shown} is not in {file}, which has: {_some(names)}")
    unmapped = [name for name in names if name not in mapped]
    if unmapped:
        problems.append(f"{path}: {file} also has {_some(unmapped)}, which seqport.json does not map")
    return problems


def _some(names: list[str], shown: int = 8) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(map(repr, names[:shown])) + more


def _size_problems(m: Manifest) -> list[str]:
    problems = []
    for key, value in (("vocab_size", m.vocab_size), ("max_positions", m.max_positions)):
        if not 1 <= value <= MAX_SIZE:
            problems.append(f"$.{key}: {value} must be in [1, {MAX_SIZE}]")
    if not m.family:
        problems.append("$.family: must name the model family")
    if not m.tokenizer.file:
        problems.append("$.tokenizer.file: must name the tokenizer file")
    if m.tokenizer.chat_template == "":
        problems.append("$.tokenizer.chat_template: must name the template file, or be null without one")
    return problems


def _component_problems(m: Manifest) -> list[str]:
    problems = []
    if not m.components:
        problems.append("$.components: an artifact needs at least one component")
    for cname, comp in m.components.items():
        if not comp.file:
            problems.append(f"$.components.{cname}.file: must name the component's .onnx file")
        for kind, specs in (("inputs", comp.inputs), ("outputs", comp.outputs)):
            for logical, spec in specs.items():
                problems.extend(_tensor_problems(f"$.components.{cname}.{kind}.{logical}", logical, spec))
    return problems


def _tensor_problems(path: str, logical: str, spec: TensorSpec) -> list[str]:
    problems = []
    if spec.dtype not in DTYPES:
        problems.append(f"{path}.dtype: {spec.dtype!r} is not one of {DTYPES}")
    if not spec.name or ("{i}" in logical) != ("{i}" in spec.name):
        problems.append(f"{path}.name: {spec.name!r} must be a graph name, with '{{i}}' where {logical!r} has it")
    bad = [d for d in spec.shape if (isinstance(d, int) and d < 0) or d == ""]
    if bad:
        problems.append(f"{path}.shape: {spec.shape} has dims {bad}; a dim is a size >= 0 or a name")
    return problems


def _kv_problems(m: Manifest) -> list[str]:
    if m.kv is None:
        return [] if m.architecture == "encoder-only" else [f"$.kv: a {m.architecture} artifact needs its KV geometry"]
    kv, problems = m.kv, []
    for key in ("num_layers", "num_heads", "num_kv_heads", "head_dim"):
        if not 1 <= getattr(kv, key) <= MAX_GEOMETRY:
            problems.append(f"$.kv.{key}: {getattr(kv, key)} must be in [1, {MAX_GEOMETRY}]")
    if not problems and kv.num_heads % kv.num_kv_heads:
        problems.append(f"$.kv.num_kv_heads: {kv.num_kv_heads} must divide num_heads ({kv.num_heads})")
    for key, allowed in (("dtype", KV_DTYPES), ("layout", KV_LAYOUTS), ("allocation", KV_ALLOCATIONS)):
        if getattr(kv, key) not in allowed:
            problems.append(f"$.kv.{key}: {getattr(kv, key)!r} is not one of {allowed}")
    decoder = m.components.get("decoder")
    if decoder is not None and kv.allocation in KV_ALLOCATIONS:
        takes_position = "cache_position" in decoder.inputs
        if takes_position != (kv.allocation == "preallocated"):
            problems.append(
                f"$.components.decoder.inputs: a {kv.allocation} cache "
                + ("needs" if not takes_position else "has no")
                + " cache_position input"
            )
    return problems


#: what a state's first past may be (StateSpec.initial).
STATE_INITIALS = ("zeros",)


def _state_problems(m: Manifest) -> list[str]:
    """Each declared decoder state: a plain name, a shape rule with "batch" first and at most one
    "steps", a float dtype, a known initial value, and graph tensors of the rule's rank."""
    problems = []
    if m.states and m.kv is not None and m.kv.allocation != "growing":
        problems.append(f"$.states: declared states need kv.allocation 'growing', not {m.kv.allocation!r}")
    decoder = m.components.get("decoder")
    for name, state in m.states.items():
        path = f"$.states.{name}"
        if not name.isidentifier():
            problems.append(f"{path}: a state name must be an identifier (letters, digits, _)")
        rule = state.shape
        roles_ok = all(d in ("batch", "steps") or (isinstance(d, int) and d >= 0) for d in rule)
        if not rule or rule[0] != "batch" or rule.count("batch") != 1 or rule.count("steps") > 1 or not roles_ok:
            problems.append(
                f"{path}.shape: {rule} must start with 'batch' and hold sizes >= 0, at most one 'steps', no other names"
            )
        if state.dtype not in KV_DTYPES or state.initial not in STATE_INITIALS:
            problems.append(f"{path}: dtype must be one of {KV_DTYPES} and initial one of {STATE_INITIALS}")
        for logical, specs in ((f"past_{name}.{{i}}", "inputs"), (f"present_{name}.{{i}}", "outputs")):
            tensor = getattr(decoder, specs).get(logical) if decoder is not None else None
            if tensor is not None and len(tensor.shape) != len(rule):
                where = f"$.components.decoder.{specs}.{logical}.shape"
                problems.append(f"{where}: {tensor.shape} has not the rank of {rule}")
    return problems


def _special_id_problems(m: Manifest) -> list[str]:
    ids = m.special_ids
    problems = []
    if not ids.eos and m.architecture != "encoder-only":
        problems.append("$.special_ids.eos: at least one end-of-sequence id is needed")
    named = [(f"eos[{k}]", value) for k, value in enumerate(ids.eos)]
    named += [(key, getattr(ids, key)) for key in ("pad", "bos", "decoder_start", "unk")]
    for key, value in named:
        if value is not None and not 0 <= value < m.vocab_size:
            problems.append(f"$.special_ids.{key}: {value} is outside the vocabulary [0, {m.vocab_size})")
    return problems


def _generation_problems(m: Manifest) -> list[str]:
    """The defaults must make a valid GenerationConfig whose ids lie in the vocabulary."""
    known = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = [key for key in m.generation if key not in known]
    problems = [f"$.generation.{key}: unknown option (known: {', '.join(sorted(known))})" for key in unknown]
    if problems:
        return problems
    try:
        GenerationConfig.from_defaults(m.generation).check_token_ids(m.vocab_size)
    except (ConfigError, TypeError, ValueError) as exc:
        return [f"$.generation: {exc}"]
    return []


def _required_name_problems(m: Manifest) -> list[str]:
    """Each component the engine runs has the logical inputs and outputs it feeds and reads."""
    problems = []
    for cname, (inputs, outputs) in REQUIRED_NAMES.get(m.architecture, {}).items():
        comp = m.components.get(cname)
        if comp is None:
            problems.append(f"$.components: this {m.architecture} artifact needs a {cname!r} component")
            continue
        if m.states and cname == "decoder":  # declared states replace the self-attention K/V
            inputs = tuple(n for n in inputs if n not in _LAYER_KV) + tuple(f"past_{s}.{{i}}" for s in m.states)
            outputs = tuple(n for n in outputs if n not in _PRESENT_KV) + tuple(f"present_{s}.{{i}}" for s in m.states)
        for kind, needed, have in (("inputs", inputs, comp.inputs), ("outputs", outputs, comp.outputs)):
            missing = [name for name in needed if name not in have]
            if missing:
                problems.append(
                    f"$.components.{cname}.{kind}: missing {', '.join(map(repr, missing))}, which the engine "
                    f"needs (it has: {', '.join(sorted(have))})"
                )
    return problems


def _record_problems(m: Manifest) -> list[str]:
    """Recorded figures: non-negative, opset a version number."""
    problems = []
    if m.provenance.opset < 0:
        problems.append(f"$.provenance.opset: {m.provenance.opset} must be >= 0")
    negative = [k for k, v in m.validation.tolerance.items() if v < 0]
    if negative:
        problems.append(f"$.validation.tolerance: {negative} must be >= 0")
    if m.pooling is not None and m.pooling.dimension < 0:
        problems.append(f"$.pooling.dimension: {m.pooling.dimension} must be >= 0")
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
