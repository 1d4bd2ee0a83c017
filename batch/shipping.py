"""Getting an artifact to Ray workers: by path (shared storage) or through the object store.

A shipped artifact is its files' bytes, one object each; a worker writes them to a temporary
folder once and loads from there with the sha256 checks on (load(verify=True)), so a file
damaged on the way fails loudly on that worker. The folder is removed once the model is loaded
(it reads nothing from the folder afterwards), so workers and replicas leave no copy behind in
the node's temporary directory, however many jobs run.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqport.engine.errors import ConfigError

SHIP_LIMIT_BYTES = 2 * 2**30  # the object store is for small artifacts; big ones belong on shared storage


@dataclass(frozen=True)
class ArtifactSource:
    """Where workers find the artifact.

    Args:
        path: the folder (every node must see it at this path unless `files` is set).
        files: relative file name → ObjectRef of its bytes, when shipped through the object store.
    """

    path: str
    files: dict[str, Any] | None = None


def ship(folder: Path) -> ArtifactSource:
    """Put every file of `folder` in the Ray object store (ray.init() must have run).

    Raises:
        ConfigError: the artifact is larger than SHIP_LIMIT_BYTES.
    """
    import ray

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    if total > SHIP_LIMIT_BYTES:
        raise ConfigError(
            f"{folder} holds {total / 2**30:.1f} GiB, more than --ship-artifact sends "
            f"({SHIP_LIMIT_BYTES / 2**30:.0f} GiB): put the artifact on storage every node sees and pass its path"
        )
    return ArtifactSource(str(folder), {str(p.relative_to(folder)): ray.put(p.read_bytes()) for p in files})


@contextmanager
def materialized(source: ArtifactSource) -> Iterator[Path]:
    """The artifact folder on this worker while the block runs: the path itself (never removed:
    it is the user's), or the shipped files written to a temporary folder that is removed when
    the block ends. Load the model inside the block; it keeps what it needs in memory."""
    if source.files is None:
        yield Path(source.path)
        return
    import ray

    folder = Path(tempfile.mkdtemp(prefix="seqport-artifact-"))
    try:
        for name, ref in source.files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(ray.get(ref))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
