"""Shared weights: tensors that several components use, opened once per loaded model.

Why: the exporter stores a tensor that two graphs hold byte-identical (a tied embedding) once,
in the artifact's shared file (export/weights_layout.py). Each is memory-mapped read-only here
and the same array goes to every session that uses it, which onnxruntime reads in place
(SessionOptions.add_initializer): one copy in memory instead of one per component.
"""

from __future__ import annotations

import collections
import math
import mmap
from pathlib import Path

import numpy as np

from seqport.engine.artifact_files import artifact_file, blocks, check_sha256, weights_path
from seqport.engine.errors import IntegrityError
from seqport.engine.manifest import Manifest, SharedTensor, WeightsFile


def open_shared_weights(
    folder: str | Path, manifest: Manifest, verify: bool = True
) -> dict[str, dict[str, np.ndarray]]:
    """Memory-map the manifest's shared tensors, each once, grouped by the components using them.

    Args:
        folder: the artifact folder.
        manifest: its manifest; an artifact without shared weights gives {}.
        verify: check the shared file's sha256 (the graphs that take the tensors are always
            checked: a graph that does not match would crash onnxruntime instead of failing).

    Returns:
        component name → graph initializer name → read-only array (dtype and shape of the
        manifest) backed by a read-only mmap of the shared file.
        The arrays must stay referenced as long as the sessions using them.

    Raises:
        ArtifactError: the shared file is missing or lies outside the artifact folder.
        IntegrityError: the shared file or a graph using it does not match seqport.json.
    """
    shared = manifest.shared_weights
    if shared is None:
        return {}
    folder = Path(folder)
    users = sorted({c for tensor in shared.tensors.values() for c in tensor.components})
    what = f"shared by {', '.join(users)}"
    path = weights_path(folder, WeightsFile(shared.file, shared.sha256), what, verify, "$.shared_weights.file")
    if not verify:  # the sha256 check reads the file into 4 KiB pages; without it, read it so here
        collections.deque(blocks(path), maxlen=0)
    for name in users:
        component = manifest.components[name]
        check_sha256(artifact_file(folder, component.file, f"$.components.{name}.file"), component.sha256)
    size = path.stat().st_size
    per_component: dict[str, dict[str, np.ndarray]] = {name: {} for name in users}
    for name, tensor in shared.tensors.items():
        array = _map(path, size, name, tensor)
        for component in tensor.components:
            per_component[component][name] = array
    return per_component


def _map(path: Path, size: int, name: str, tensor: SharedTensor) -> np.ndarray:
    dtype = np.dtype(tensor.dtype)
    end = tensor.offset + dtype.itemsize * math.prod(tensor.shape)
    if end > size:
        raise IntegrityError(
            f"{path} holds {size} bytes but {name!r} ends at byte {end}: the file is truncated. "
            "Copy the whole artifact folder again, or re-export the model."
        )
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after close
    count = math.prod(tensor.shape)
    return np.frombuffer(mapping, dtype=dtype, count=count, offset=tensor.offset).reshape(tensor.shape)


def release_pages(shared: dict[str, dict[str, np.ndarray]]) -> None:
    """Drop the resident pages of the shared mappings once the sessions are built.

    Why: building a session reads a shared table whole (onnxruntime prepacks the vocabulary
    projection into its own buffer), which leaves every page of the mapping resident; later only
    the token Gathers read it, a few rows a step. The pages are clean file pages, so dropping them
    is free and they fault back in on demand. Peak RSS of a t5-small run at batch 8 fell from
    420 to 402 MiB (docs/runtimes.md, "Memory"). No-op where the platform has no MADV_DONTNEED.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    for arrays in shared.values():
        for array in arrays.values():
            mapping = array.base
            while mapping is not None and not isinstance(mapping, mmap.mmap):
                mapping = getattr(mapping, "base", None) if not isinstance(mapping, memoryview) else mapping.obj
            if isinstance(mapping, mmap.mmap):
                mapping.madvise(advice)
