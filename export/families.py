"""Which adapter loads which checkpoint: one flat registry keyed by config.json's model_type."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from seqport.engine.errors import ArtifactError, ExportError

#: model_type -> module with `load(folder) -> adapter`.
FAMILIES: dict[str, str] = {
    "seqport-transformer": "seqport.export.seed",
}


def read_model_type(folder: Path) -> str:
    config = folder / "config.json"
    if not folder.is_dir():
        raise ArtifactError(f"model folder not found: {folder}")
    if not config.is_file():
        raise ArtifactError(
            f"{config} not found: pass a folder holding config.json, the weights and the "
            "tokenizer (a seqport reference checkpoint or a HuggingFace model folder)."
        )
    try:
        return str(json.loads(config.read_text())["model_type"])
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        raise ExportError(f"{config} has no readable model_type ({exc!r})") from None


def load_adapter(folder: Path, family: str | None = None):
    """Load the checkpoint in `folder` with the adapter of its family (or of `family`).

    Raises:
        ExportError: the family is not supported; the message lists the supported ones.
    """
    model_type = family or read_model_type(folder)
    if model_type not in FAMILIES:
        raise ExportError(
            f"model_type {model_type!r} is not supported; supported model types are: "
            + ", ".join(sorted(FAMILIES))
        )
    return importlib.import_module(FAMILIES[model_type]).load(folder)
