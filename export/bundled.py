"""The translator shipped inside the package, and its artifact exported once into a cache.

`seqport demo`, `seqport serve` (with no artifact) and `seqport batch` all start from it, so
a newcomer sees every command work before exporting a model of their own. Exporting needs
torch; reusing a cached artifact does not.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import resources
from pathlib import Path

from seqport.engine.errors import ArtifactError, SeqportError
from seqport.engine.manifest import load_manifest, sha256_of


def bundled_checkpoint() -> Path:
    """Folder of the translator shipped inside the package (export/models/translator).

    Raises:
        ArtifactError: the package data is missing (a broken install).
    """
    folder = Path(str(resources.files("seqport.export") / "models" / "translator"))
    if not (folder / "model.safetensors").is_file():
        raise ArtifactError(f"the bundled translator is missing from {folder}; reinstall seqport")
    return folder


def cache_root() -> Path:
    """Where exported bundled artifacts are kept: $SEQPORT_CACHE or ~/.cache/seqport."""
    return Path(os.environ.get("SEQPORT_CACHE", Path.home() / ".cache" / "seqport"))


def cached_artifact(checkpoint: Path, progress: bool = True) -> tuple[Path, bool]:
    """Export `checkpoint` into the cache once (needs torch); later runs reuse it.

    Returns:
        (artifact folder, whether it was reused).
    """
    # "-rows": the decoder takes per-row position_ids/attention_mask; "-head": it also has the greedy
    # head (export/greedy_head.py). An older engine sharing the cache keeps its own entry
    rows = cache_root() / f"translator-{sha256_of(checkpoint / 'model.safetensors')[:12]}-rows"
    folder = rows.with_name(rows.name + "-head")
    if _current(folder):
        return folder, True
    if not _can_export() and _current(rows, head=False):
        return rows, True  # cannot export here: the entry without the head runs the same, its argmax on the host
    from seqport.export.pipeline import export_model  # torch: only when the cache is empty or old

    export_model(checkpoint, folder, progress=progress, overwrite=True)  # our own cache entry
    return folder, False


def _can_export() -> bool:
    """Whether torch is installed (a runtime-only install cannot export)."""
    return importlib.util.find_spec("torch") is not None


def _current(folder: Path, head: bool = True) -> bool:
    """A cached artifact that loads, whose decoder takes per-row position_ids (continuous
    batching of encoder-decoder rows) and, with `head`, has the greedy head; an older entry is
    exported again."""
    try:
        manifest = load_manifest(folder)
    except SeqportError:
        return False
    decoder = manifest.components["decoder"]
    return "position_ids" in decoder.inputs and (not head or "greedy_ids" in decoder.outputs)
