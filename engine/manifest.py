"""seqport.json: the one schema shared by the exporter (writer) and the engine (reader).

The manifest is the whole contract between an exported artifact and the engine. Frozen
dataclasses describe it; `to_dict()` writes canonical JSON and `from_dict()` rejects unknown
keys, naming the JSON path of every problem it finds before raising once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqport.engine.errors import ArtifactError, IntegrityError, ManifestError

FORMAT_VERSION = 1
MANIFEST_FILE = "seqport.json"
ARCHITECTURES = ("encoder-decoder", "decoder-only", "encoder-only")
DTYPES = ("int64", "int32", "float32", "float16", "bool")
#: pooling modes of encoder-only embeddings, in the order they are concatenated (sentence-transformers).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
#: how the decoder's self-attention cache grows: concatenated per step, or written into buffers
#: sized for the whole request (past and present are then the same (B, H_kv, C, D) buffer).
KV_ALLOCATIONS = ("growing", "preallocated")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its graph name, element type and named dimensions.

    Dimension names are symbols (e.g. "batch_size") shared across tensors of a component, so
    the engine can check that feeds agree before calling the runtime; integers are fixed sizes.
    Names may hold "{i}", expanded for each layer.
    """

    name: str
    dtype: str
    shape: list[str | int]


@dataclass(frozen=True)
class WeightsFile:
    """A file of ONNX external data: initializers kept beside the graph (docs/manifest.md)."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Component:
    """One ONNX file and its logical → graph name map.

    `data`: the file holding this component's own initializers as ONNX external data, or None
    when the weights are inline in the .onnx file.
    """

    file: str
    sha256: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    data: WeightsFile | None = None


@dataclass(frozen=True)
class SharedTensor:
    """One initializer stored once in the shared weights file, used by several components.

    Args:
        dtype: element type, one of DTYPES.
        shape: its dimensions.
        offset: byte offset in the shared file (a multiple of 4096, so it can be memory-mapped).
        components: the components whose graph holds it under this initializer name.
    """

    dtype: str
    shape: list[int]
    offset: int
    components: list[str]


@dataclass(frozen=True)
class SharedWeights:
    """Initializers that several components hold byte-identical (a tied embedding): stored once
    in `file`, opened once by the engine and handed to every session that uses them.

    `tensors` maps each graph initializer name to where it lies in `file`.
    """

    file: str
    sha256: str
    tensors: dict[str, SharedTensor]


@dataclass(frozen=True)
class KVGeometry:
    """Shape of the self-attention cache: per layer, key and value of (B, H_kv, P, D).

    `allocation` "growing": past (B, H_kv, P, D) in, present (B, H_kv, P+T, D) out.
    "preallocated": past and present are (B, H_kv, C, D) buffers and the decoder takes
    `cache_position` (T,), the slots its new tokens are written to (docs/manifest.md).
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float32"
    layout: str = "BHSD"
    allocation: str = "growing"


@dataclass(frozen=True)
class SpecialIds:
    """Special token ids; `eos` is a list because several families stop on more than one."""

    eos: list[int]
    pad: int | None = None
    bos: int | None = None
    decoder_start: int | None = None
    unk: int | None = None


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizers file and how the engine should call it."""

    file: str = "tokenizer.json"
    add_special_tokens: bool = True
    chat_template: str | None = None  # file beside `file` (chat_template.jinja), when the checkpoint has one
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... → token text


@dataclass(frozen=True)
class Provenance:
    """Who wrote the artifact, from what, with which tool versions."""

    source: str
    exporter: str
    torch: str = ""
    onnx: str = ""
    onnxruntime: str = ""
    opset: int = 0
    created: str = ""


@dataclass(frozen=True)
class TextCheck:
    """Export-time generation check on real text encoded by the model's own tokenizer.

    Args:
        prompts: the sentences (decoder-only: prompts; encoder-decoder: sources).
        steps: greedy steps taken per prompt, in PyTorch and in onnxruntime, each on its own cache.
        greedy_equal: prompts whose `steps` greedy ids are identical in both.
        near_ties: prompts where the two picked different tokens whose PyTorch logits were
            within the logits tolerance of each other (accepted: noise, not a fault).
        top_k: size of the next-token sets compared at every prompt position and greedy step.
        top_k_agreement: mean fraction of PyTorch's top-k ids that onnxruntime's top-k holds.
        max_abs_diff: largest |ort - torch| logit on that text.
    """

    prompts: list[str]
    steps: int
    greedy_equal: int
    near_ties: int
    top_k: int
    top_k_agreement: float
    max_abs_diff: float


@dataclass(frozen=True)
class Validation:
    """Export-time parity against PyTorch: max |ort - torch| per component and output.

    An output passes when max |ort - torch| <= tolerance[dtype] + rtol[dtype] * max |torch|
    (both already multiplied by `scale`, the export's `tolerance` option). `text` is the
    generation check on real sentences (None for encoder-only models or without a tokenizer).
    """

    tolerance: dict[str, float]
    max_abs_diff: dict[str, dict[str, float]]
    cases: list[str] = field(default_factory=list)
    rtol: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    text: TextCheck | None = None


@dataclass(frozen=True)
class Pooling:
    """How an encoder-only artifact turns last_hidden_state (B, S, d) into one vector per input.

    Args:
        modes: pooled vectors concatenated in POOLING_MODES order ("mean" for most models).
        normalize: L2-normalise the result (a sentence-transformers Normalize module).
        dimension: size of the result, len(modes) * d.
    """

    modes: list[str]
    normalize: bool = False
    dimension: int = 0


@dataclass(frozen=True)
class Optimization:
    """Offline graph fusions applied after export (`seqport export --optimize`), re-validated.

    Args:
        tool: the optimizer and its version, e.g. "onnxruntime.transformers 1.32.0".
        model_type: the optimizer's pattern set that was used ("bart", "bert", "gpt2", ...).
        fusions: per component, each fused operator that was created and how many.
        validation: the fused components against PyTorch, with the export's cases and tolerances.
    """

    tool: str
    model_type: str
    fusions: dict[str, dict[str, int]]
    validation: Validation


@dataclass(frozen=True)
class Quantization:
    """int8 weights (`seqport export --quantize int8`) and how far they moved the outputs.

    fp32 tolerances do not apply to int8 logits: `max_abs_diff` is information; the gate is the
    greedy token agreement with the fp32 components on a fixed set of inputs.

    Args:
        method: "dynamic-int8": int8 weights, activations quantized at run time.
        per_channel: one weight scale per output channel (True) or per tensor (False).
        op_types: operator types whose weights were quantized.
        quantized_nodes: per component, how many nodes were quantized.
        token_agreement: fraction of target positions where the int8 components pick the fp32
            components' greedy token (teacher-forced on the fp32 output).
        min_agreement: the gate token_agreement had to reach.
        sequence_match: fraction of inputs whose free-running greedy output is identical.
        candidates: token_agreement of each setting tried ("per_tensor", "per_channel").
        max_abs_diff: per component output, the largest |int8 - fp32| on those inputs.
        inputs: what the fixed inputs were.
        bytes: per component, file size [fp32, int8].
    """

    method: str
    per_channel: bool
    op_types: list[str]
    quantized_nodes: dict[str, int]
    token_agreement: float
    min_agreement: float
    sequence_match: float
    candidates: dict[str, float]
    max_abs_diff: dict[str, dict[str, float]]
    inputs: str
    bytes: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Root of seqport.json."""

    format_version: int
    architecture: str
    family: str
    vocab_size: int
    max_positions: int
    components: dict[str, Component]
    kv: KVGeometry | None
    special_ids: SpecialIds
    tokenizer: TokenizerSpec
    provenance: Provenance
    validation: Validation
    generation: dict[str, Any] = field(default_factory=dict)
    pooling: Pooling | None = None  # encoder-only feature extraction
    labels: list[str] = field(default_factory=list)  # encoder-only classification: logits index → label
    optimization: Optimization | None = None  # `seqport export --optimize`
    quantization: Quantization | None = None  # `seqport export --quantize int8`
    shared_weights: SharedWeights | None = None  # tensors stored once for several components

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build a manifest from parsed JSON, collecting every problem before raising.

        Raises:
            ManifestError: unknown format version, unknown or missing keys, wrong types.
        """
        _check_version(data)
        problems: list[str] = []
        manifest = _build(cls, data, "$", problems)
        if not problems:
            problems.extend(_semantic_problems(manifest))
        if problems:
            raise ManifestError(
                "invalid seqport.json:\n  - "
                + "\n  - ".join(problems)
                + "\nRe-export the model with `seqport export`."
            )
        return manifest


def load_manifest(folder: str | Path) -> Manifest:
    """Read `folder/seqport.json`.

    Raises:
        ArtifactError: the folder or its manifest is missing.
        ManifestError: the manifest is not JSON or does not fit the schema.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder not found: {folder}. Pass the folder `seqport export` wrote.")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{path} not found: {folder} is not a seqport artifact. "
            "Create one with `seqport export SRC_DIR OUT_DIR`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}). Re-export the model.") from None
    return Manifest.from_dict(data)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def component_path(folder: str | Path, manifest: Manifest, name: str, verify: bool = True) -> Path:
    """Path of a component file, checked to exist and (by default) to match its sha256.

    Raises:
        ArtifactError: the manifest has no such component, or the file is missing.
        IntegrityError: the file's sha256 differs from the manifest's.
    """
    if name not in manifest.components:
        raise ArtifactError(
            f"this {manifest.architecture} artifact has no component {name!r}; "
            f"it has: {', '.join(sorted(manifest.components))}"
        )
    spec = manifest.components[name]
    path = Path(folder) / spec.file
    if not path.is_file():
        raise ArtifactError(f"component file missing: {path} ({name}). Re-export the model.")
    if verify:
        check_sha256(path, spec.sha256)
    if spec.data is not None:
        weights_path(folder, spec.data, f"the weights of {name}", verify)
    return path


def weights_path(folder: str | Path, weights: WeightsFile, what: str, verify: bool = True) -> Path:
    """Path of an external-data file, checked to exist and (by default) to match its sha256.

    Raises:
        ArtifactError: the file is missing.
        IntegrityError: the file's sha256 differs from the manifest's.
    """
    path = Path(folder) / weights.file
    if not path.is_file():
        raise ArtifactError(
            f"weights file missing: {path} ({what}). The .onnx files keep their weights in the .data "
            "files beside them: copy the whole artifact folder, or re-export the model."
        )
    if verify:
        check_sha256(path, weights.sha256)
    return path


def check_sha256(path: Path, expected: str) -> None:
    """Raises IntegrityError when `path`'s sha256 is not `expected`."""
    if sha256_of(path) != expected:
        raise IntegrityError(
            f"{path} does not match the sha256 in seqport.json: the file is corrupt or was "
            "replaced. Re-export the model, or pass verify=False if you changed it on purpose."
        )


def expand_layers(mapping: dict[str, TensorSpec], num_layers: int) -> dict[str, TensorSpec]:
    """Expand "{i}" templates into one entry per layer: "past_key.{i}" → "past_key.0", ..."""
    expanded: dict[str, TensorSpec] = {}
    for logical, spec in mapping.items():
        if "{i}" not in logical:
            expanded[logical] = spec
            continue
        for i in range(num_layers):
            name = spec.name.replace("{i}", str(i))
            expanded[logical.replace("{i}", str(i))] = dataclasses.replace(spec, name=name)
    return expanded


def _check_version(data: Any) -> None:
    if not isinstance(data, dict):
        raise ManifestError("seqport.json must hold a JSON object. Re-export the model.")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError("seqport.json has no integer format_version. Re-export the model.")
    if version > FORMAT_VERSION:
        exporter = data.get("provenance", {}).get("exporter", "an unknown exporter")
        raise ManifestError(
            f"seqport.json has format_version {version}, exported by {exporter}; this engine "
            f"reads format_version {FORMAT_VERSION}. Upgrade seqport, or re-export with this one."
        )
    if version < FORMAT_VERSION:
        raise ManifestError(
            f"seqport.json has format_version {version}, older than this engine's "
            f"{FORMAT_VERSION}, which no longer reads it. Re-export the model."
        )


def _semantic_problems(m: Manifest) -> list[str]:
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


def _build(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Check `value` against type `tp` recursively; append problems, return the built value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, problems)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None) and _matches(option, value):
                return _build(option, value, path, problems)
        problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return value
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{path}[{k}]", problems) for k, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, got {type(value).__name__}")
            return value
        _, item = typing.get_args(tp)
        return {k: _build(item, v, f"{path}.{k}", problems) for k, v in value.items()}
    if not _matches(tp, value):
        problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__}")
    return value


def _build_dataclass(cls: Any, value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object, got {type(value).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            problems.append(f"{path}.{key}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], f"{path}.{name}", problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{path}.{name}: missing")
    if problems:
        return None
    return cls(**kwargs)


def _matches(tp: Any, value: Any) -> bool:
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(tp)
    if origin is not None:
        return isinstance(value, origin)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
