"""Which adapter loads which checkpoint: one flat registry keyed by config.json's model_type."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from seqport.engine.errors import ArtifactError, ExportError
from seqport.export.gguf import gguf_file
from seqport.export.gguf import model_type as gguf_model_type

#: model_type -> module with `load(folder) -> adapter`.
FAMILIES: dict[str, str] = {
    "seqport-transformer": "seqport.export.seed",
    "bert": "seqport.export.bert",
    "distilbert": "seqport.export.bert",
    "roberta": "seqport.export.bert",
    "xlm-roberta": "seqport.export.bert",
    "gpt2": "seqport.export.gpt2",
    "llama": "seqport.export.llama",
    "mistral": "seqport.export.llama",
    "qwen2": "seqport.export.llama",
    "t5": "seqport.export.t5",
    "mt5": "seqport.export.t5",
    "bart": "seqport.export.bart",
    "mbart": "seqport.export.bart",
    "marian": "seqport.export.marian",
}


def read_model_type(folder: Path) -> str:
    config = folder / "config.json"
    if not folder.is_dir():
        raise ArtifactError(f"model folder not found: {folder}")
    if not config.is_file() and gguf_file(folder) is not None:
        return gguf_model_type(folder)
    if not config.is_file():
        raise ArtifactError(
            f"{config} not found: pass a folder holding config.json, the weights and the "
            "tokenizer (a seqport reference checkpoint or a HuggingFace model folder), or a .gguf file."
        )
    try:
        return str(json.loads(config.read_text())["model_type"])
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        raise ExportError(f"{config} has no readable model_type ({exc!r})") from None


def load_adapter(folder: Path, family: str | None = None, task: str | None = None):
    """Load the checkpoint in `folder` with the adapter of its family (or of `family`).

    Args:
        task: what an encoder-only model is exported for ("feature-extraction" or
            "sequence-classification"); None lets the family decide. Other families take none.

    Raises:
        ExportError: the family is not supported, or takes no task; the message lists the supported ones.
    """
    model_type = family or read_model_type(folder)
    if model_type not in FAMILIES:
        raise ExportError(
            f"model_type {model_type!r} is not supported; supported model types are: "
            + ", ".join(sorted(FAMILIES))
        )
    module = importlib.import_module(FAMILIES[model_type])
    if task is None:
        return module.load(folder)
    if not hasattr(module, "TASKS"):
        raise ExportError(f"a task (--task) applies to encoder-only families only; {model_type!r} takes none")
    return module.load(folder, task=task)
