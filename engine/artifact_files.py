"""The files of an artifact folder: where each one the manifest names lies, and its integrity.

Every file is checked to exist and, unless the caller opts out, to match the sha256 the
manifest records for it (docs/manifest.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from seqport.engine.errors import ArtifactError, IntegrityError

if TYPE_CHECKING:
    from seqport.engine.manifest import Manifest, WeightsFile


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
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
