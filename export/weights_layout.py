"""The on-disk layout of an artifact's weights: ONNX external data, shared tensors stored once.

Why: onnxruntime copies inline weights out of the .onnx file while it loads (about 1.5x the
file at peak), but memory-maps external data on CPU. And a tensor that several components
hold byte-identical (a tied token embedding: the encoder's Gather, the decoder's projection)
would be stored and loaded once per component; here it is written once to `shared.data`, and
the engine maps it once and hands the same buffer to every session (docs/manifest.md).

This is the last step of an export: --optimize, --quantize and --dtype rewrite the .onnx
files before it, so they always read plain inline files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import set_external_data

from seqport.engine.manifest import (
    DTYPES,
    MANIFEST_FILE,
    Component,
    Manifest,
    SharedTensor,
    SharedWeights,
    WeightsFile,
    sha256_of,
)

logger = logging.getLogger(__name__)
SHARED_FILE = "shared.data"
#: tensors start at multiples of this, so each can be memory-mapped where it lies.
ALIGNMENT = 4096
#: smaller initializers stay inline in the graph (onnx's own default threshold).
MIN_BYTES = 1024


def externalize_weights(folder: str | Path, manifest: Manifest) -> Manifest:
    """Rewrite every component of `folder` with its weights as external data.

    Initializers with the same name and the same bytes in two or more components, and tied
    tables (read by a Gather and a projection in one graph), go once into `shared.data`; each
    component's other initializers of at least MIN_BYTES go into `<file>.data`. Running it
    again on its own output gives the same layout.

    Args:
        folder: an artifact folder whose components `manifest` describes.
        manifest: the artifact's manifest (the .onnx files may be inline or external).

    Returns:
        The manifest with the new sha256s, each component's data file and the shared tensors;
        the caller saves it (seqport.json is removed here, as the files change).
    """
    folder = Path(folder)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # a half-rewritten folder must not look valid
    models = {name: onnx.load(str(folder / c.file)) for name, c in manifest.components.items()}
    for stale in [SHARED_FILE] + [f"{c.file}.data" for c in manifest.components.values()]:
        (folder / stale).unlink(missing_ok=True)  # external data is appended: start from empty files
    tensors = _write_shared(folder / SHARED_FILE, models, {**_tied_names(models), **_shared_names(models)})
    components = {name: _save_external(folder, c, models[name]) for name, c in manifest.components.items()}
    shared = None
    if tensors:
        shared = SharedWeights(file=SHARED_FILE, sha256=sha256_of(folder / SHARED_FILE), tensors=tensors)
    return dataclasses.replace(manifest, components=components, shared_weights=shared)


def _shared_names(models: dict[str, onnx.ModelProto]) -> dict[str, list[str]]:
    """Initializer name → the components holding it with identical dtype, shape and bytes."""
    holders: dict[tuple, list[str]] = {}
    for cname, model in models.items():
        for tensor in model.graph.initializer:
            if tensor.data_type == TensorProto.STRING or _dtype(tensor) not in DTYPES:
                continue
            raw = _raw_bytes(tensor)
            if len(raw) >= MIN_BYTES:
                key = (tensor.name, tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest())
                holders.setdefault(key, []).append(cname)
    shared: dict[str, list[str]] = {}
    for (name, *_), components in holders.items():
        if len(components) >= 2 and name not in shared:  # a name is shared with one content at most
            shared[name] = components
    return shared


def _tied_names(models: dict[str, onnx.ModelProto]) -> dict[str, list[str]]:
    """Initializer name → [component] for a table one graph reads both with a Gather and with a
    Gemm/MatMul (a tied embedding, e.g. GPT-2's wte). onnxruntime prepacks the projection into
    its own buffer, after which only the Gather reads the table, a few rows a step; mapped by
    the engine (not by onnxruntime), its pages can be dropped once the session is built
    (engine/weights.py release_pages) instead of staying resident as a second copy."""
    tied: dict[str, list[str]] = {}
    for cname, model in models.items():
        readers: dict[str, set[str]] = {}
        for node in model.graph.node:
            for name in node.input:
                readers.setdefault(name, set()).add(node.op_type)
        for tensor in model.graph.initializer:
            ops = readers.get(tensor.name, set())
            if "Gather" in ops and ops & {"Gemm", "MatMul"} and _dtype(tensor) in DTYPES:
                if len(_raw_bytes(tensor)) >= MIN_BYTES:
                    tied[tensor.name] = [cname]
    return tied


def _write_shared(
    path: Path, models: dict[str, onnx.ModelProto], shared: dict[str, list[str]]
) -> dict[str, SharedTensor]:
    """Write each shared tensor once, aligned, and point every holder's initializer at it."""
    tensors: dict[str, SharedTensor] = {}
    if not shared:
        return tensors
    with open(path, "wb") as handle:
        for name, components in shared.items():
            first = _initializer(models[components[0]], name)
            raw, offset = _raw_bytes(first), _aligned(handle.tell())
            handle.write(b"\0" * (offset - handle.tell()))
            handle.write(raw)
            tensors[name] = SharedTensor(_dtype(first), list(first.dims), offset, sorted(components))
            for cname in components:
                _point_at(_initializer(models[cname], name), path.name, offset, len(raw))
    logger.debug("stored %d shared tensors once in %s", len(tensors), path)
    return tensors


def _save_external(folder: Path, component: Component, model: onnx.ModelProto) -> Component:
    """Save the graph with its remaining large initializers in `<file>.data`, each aligned.

    Offsets are set here, not left to onnx.save_model's save_as_external_data, which packs
    tensors unaligned (and checks for an existing file relative to the working directory).
    """
    location, end = f"{component.file}.data", 0
    for tensor in model.graph.initializer:
        if _movable(tensor) and len(_raw_bytes(tensor)) >= MIN_BYTES:
            _to_raw(tensor)
            offset = _aligned(end)
            set_external_data(tensor, location, offset, len(tensor.raw_data))
            end = offset + len(tensor.raw_data)
    if end:
        (folder / location).touch()  # created here with the usual permissions (onnx's own are 0600)
    onnx.save_model(model, str(folder / component.file))  # writes each marked tensor's raw_data to `location`
    data = None
    if end:
        data = WeightsFile(file=location, sha256=sha256_of(folder / location))
    return dataclasses.replace(component, sha256=sha256_of(folder / component.file), data=data)


def _movable(tensor: TensorProto) -> bool:
    """Not yet external (shared ones are) and of a fixed-size type (strings stay inline)."""
    return tensor.data_location != TensorProto.EXTERNAL and tensor.data_type != TensorProto.STRING


def _point_at(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    _to_raw(tensor)
    set_external_data(tensor, location, offset, length)
    tensor.ClearField("raw_data")  # already in the shared file: onnx must not write it again


def _to_raw(tensor: TensorProto) -> None:
    """Typed fields (float_data, ...) → raw_data, the only form external data is written from."""
    if not tensor.HasField("raw_data"):
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))


def _raw_bytes(tensor: TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def _dtype(tensor: TensorProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name


def _initializer(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT
