"""The files of an artifact folder: where each one the manifest names lies, and its integrity.

Every path in a manifest is relative to the artifact folder and must stay inside it after
symlinks are resolved: an artifact someone else exported must not make the engine read (or
memory-map as weights) any other file. Every file is checked to exist and, unless the caller
opts out, to match the sha256 the manifest records for it (docs/manifest.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from seqport.engine.errors import ArtifactError, IntegrityError

# engine/manifest.py re-exports these functions, so importing its dataclasses here (even for
# annotations) would close an import cycle: `Manifest` and `WeightsFile` are named, not imported.
Manifest = Any
WeightsFile = Any


def blocks(path: str | Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of a file in `size` blocks, read so that the page cache keeps it in 4 KiB pages.

    Why: a file read with the kernel's default readahead may land in the page cache in large
    folios (up to 2 MiB on Linux 6.x), and a memory-mapped file is then mapped a whole folio at
    a time: one token Gather reading a 3 KiB row of a shared embedding (engine/weights.py) made
    2 MiB resident. GPT-2's batch-8 peak RSS was 719 MiB or 828 MiB for the same run, depending
    only on whether this sha256 check had read the file from disk (docs/benchmarks.md, "Where
    seqport's batch-8 peak comes from"). POSIX_FADV_RANDOM keeps the reads large but the pages
    small; a no-op where the platform has no posix_fadvise.
    """
    with open(path, "rb") as handle:
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            advise(handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        yield from iter(lambda: handle.read(size), b"")


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (`blocks`)."""
    digest = hashlib.sha256()
    for block in blocks(path):
        digest.update(block)
    return digest.hexdigest()


def artifact_file(folder: str | Path, relative: str, key: str) -> Path:
    """`folder / relative`, refused unless it resolves (symlinks followed) inside `folder`.

    Args:
        folder: the artifact folder.
        relative: a path as the manifest holds it ("encoder.onnx").
        key: its JSON path in seqport.json, for the message ("$.components.encoder.file").

    Raises:
        ArtifactError: an absolute path, a ".." part, or a path (or symlink) leading outside.
    """
    folder = Path(folder)
    parts = PureWindowsPath(relative).parts  # splits on "/" and "\\" alike
    absolute = PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor
    if not relative or absolute or ".." in parts:
        raise ArtifactError(_outside(key, relative, folder, "must be a relative path without '..'"))
    path = folder / relative
    root = folder.resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ArtifactError(_outside(key, relative, folder, f"resolves to {resolved}"))
    return path


def _outside(key: str, relative: str, folder: Path, why: str) -> str:
    return (
        f"{key}: {relative!r} points outside the artifact folder {folder} ({why}). Every file of "
        "an artifact lies inside its folder: re-export the model, or copy the files into the folder."
    )


def component_path(folder: str | Path, manifest: Manifest, name: str, verify: bool = True) -> Path:
    """Path of a component file, checked to exist and (by default) to match its sha256.

    Raises:
        ArtifactError: the manifest has no such component, or the file is missing or lies
            outside the artifact folder.
        IntegrityError: the file's sha256 differs from the manifest's.
    """
    if name not in manifest.components:
        raise ArtifactError(
            f"this {manifest.architecture} artifact has no component {name!r}; "
            f"it has: {', '.join(sorted(manifest.components))}"
        )
    spec = manifest.components[name]
    path = artifact_file(folder, spec.file, f"$.components.{name}.file")
    if not path.is_file():
        raise ArtifactError(f"component file missing: {path} ({name}). Re-export the model.")
    if verify:
        check_sha256(path, spec.sha256)
    if spec.data is not None:
        weights_path(folder, spec.data, f"the weights of {name}", verify, f"$.components.{name}.data.file")
    return path


def weights_path(
    folder: str | Path, weights: WeightsFile, what: str, verify: bool = True, key: str = "$.data.file"
) -> Path:
    """Path of an external-data file, checked to exist and (by default) to match its sha256.

    Args:
        folder: the artifact folder.
        weights: the manifest's entry for the file.
        what: what the file holds, for the message ("the weights of decoder").
        verify: check its sha256.
        key: its JSON path in seqport.json, for the message.

    Raises:
        ArtifactError: the file is missing or lies outside the artifact folder.
        IntegrityError: the file's sha256 differs from the manifest's.
    """
    path = artifact_file(folder, weights.file, key)
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
