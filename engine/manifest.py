"""seqport.json: the one schema shared by the exporter (writer) and the engine (reader).

The manifest is the whole contract between an exported artifact and the engine. Frozen
dataclasses describe it; `to_dict()` writes canonical JSON and `from_dict()` rejects unknown
keys, naming the JSON path of every problem it finds before raising once.

The jobs around the schema live beside it: engine/json_binding.py binds JSON to these
dataclasses, engine/manifest_checks.py holds the allowed values and cross-field rules, and
engine/artifact_files.py the paths and sha256 checks of the files the manifest names.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The artifact's files (paths, sha256) and the allowed values are re-exported here, so
# `from seqport.engine.manifest import ...` keeps working for the whole contract.
from seqport.engine.artifact_files import artifact_file, check_sha256, component_path, sha256_of, weights_path
from seqport.engine.errors import ArtifactError, ManifestError
from seqport.engine.export_records import Optimization, Quantization, TextCheck, Validation
from seqport.engine.json_binding import bind
from seqport.engine.manifest_checks import (
    ARCHITECTURES,
    ATTENTION_MODES,
    DTYPES,
    KV_ALLOCATIONS,
    POOLING_MODES,
    check_version,
    semantic_problems,
)

#: bump on every layout change; the engine reads versions OLDEST_FORMAT_VERSION..FORMAT_VERSION.
#: 2 added `attention` (default "portable"); 3 added `states` (default {}: the K/V cache of `kv`).
FORMAT_VERSION = 3
#: the oldest layout this engine still reads: versions 2 and 3 only added sections with defaults.
OLDEST_FORMAT_VERSION = 1
MANIFEST_FILE = "seqport.json"
__all__ = [
    "ARCHITECTURES",
    "ATTENTION_MODES",
    "DTYPES",
    "FORMAT_VERSION",
    "KV_ALLOCATIONS",
    "MANIFEST_FILE",
    "OLDEST_FORMAT_VERSION",
    "POOLING_MODES",
    "Component",
    "KVGeometry",
    "Manifest",
    "Optimization",
    "Pooling",
    "Provenance",
    "Quantization",
    "SharedTensor",
    "SharedWeights",
    "SpecialIds",
    "StateSpec",
    "TensorSpec",
    "TextCheck",
    "TokenizerSpec",
    "Validation",
    "WeightsFile",
    "artifact_file",
    "check_sha256",
    "component_path",
    "expand_layers",
    "load_manifest",
    "sha256_of",
    "weights_path",
]


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
class StateSpec:
    """One tensor of decoder state per layer that a step reads as `past_{name}.{i}` and returns
    as `present_{name}.{i}`, for the next step (docs/manifest.md, "Decoder state").

    Args:
        shape: the shape rule, per axis: "batch" (the rows; axis 0, so beams reorder it by row),
            "steps" (grows by the step's T new tokens: a K/V cache), or a fixed size (an int: a
            recurrent state keeps its shape every step).
        dtype: element type, float32 or float16.
        initial: the first step's past: "zeros" of `shape` with batch = rows and steps = 0.
    """

    shape: list[str | int]
    dtype: str = "float32"
    initial: str = "zeros"


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
    attention: str = "portable"  # ATTENTION_MODES; format_version 2
    #: the decoder's own state by name ({}: `kv`'s self-attention K/V); format_version 3
    states: dict[str, StateSpec] = field(default_factory=dict)

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
        check_version(data, FORMAT_VERSION, OLDEST_FORMAT_VERSION)
        problems: list[str] = []
        manifest = bind(cls, data, "$", problems)
        if not problems:
            problems.extend(semantic_problems(manifest))
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
