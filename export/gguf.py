"""GGUF checkpoints in: transformers' GGUF loading, at export time only.

A source is a GGUF checkpoint when it is a `.gguf` file, or a folder without config.json that
holds exactly one. transformers (`from_pretrained(folder, gguf_file=...)`, which needs the
`gguf` and `accelerate` packages) reads the config, dequantizes the weights to float32 and
rebuilds the tokenizer (with its chat template and special tokens) from the GGUF metadata; the
family adapters then export that model like any other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from seqport.engine.errors import ArtifactError, ExportError

logger = logging.getLogger(__name__)
SUFFIX = ".gguf"
_NEEDS = "exporting a GGUF file needs transformers, gguf and accelerate: pip install 'seqport[gguf]'"


def gguf_file(folder: Path) -> str | None:
    """The name of the one .gguf file in a folder without config.json, else None.

    Raises:
        ArtifactError: the folder holds several .gguf files (which one is meant is unclear).
    """
    if not folder.is_dir() or (folder / "config.json").is_file():
        return None
    found = sorted(p.name for p in folder.glob(f"*{SUFFIX}"))
    if len(found) > 1:
        raise ArtifactError(
            f"{folder} holds several GGUF files ({', '.join(found)}): pass the one to export, "
            f"e.g. seqport export {folder / found[0]} OUT"
        )
    return found[0] if found else None


def stage(source: Path, staging: Path) -> Path:
    """A folder transformers can load `source` from: the folder itself, or, for a .gguf file,
    `staging` holding a link to it (so a folder of several GGUF files exports the one named)."""
    if source.is_file() and source.suffix == SUFFIX:
        staging.mkdir(parents=True, exist_ok=True)
        link = staging / source.name
        link.symlink_to(source.resolve())
        return staging
    return source


def pretrained_kwargs(folder: Path) -> dict[str, str]:
    """Extra from_pretrained arguments for `folder`: {"gguf_file": name} for a GGUF folder."""
    name = gguf_file(folder)
    if name is None:
        return {}
    try:
        import accelerate  # noqa: F401  (transformers' GGUF loading needs it)
        import gguf  # noqa: F401
    except ImportError:
        raise ExportError(_NEEDS) from None
    return {"gguf_file": name}


def model_type(folder: Path) -> str:
    """config.json's model_type as transformers derives it from the GGUF metadata.

    Raises:
        ExportError: transformers or gguf is missing, or cannot read the file's architecture.
    """
    kwargs = pretrained_kwargs(folder)
    try:
        from transformers import AutoConfig
    except ImportError:
        raise ExportError(_NEEDS) from None
    try:
        return str(AutoConfig.from_pretrained(str(folder), **kwargs).model_type)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"transformers could not read the GGUF file {folder / kwargs['gguf_file']}: {first}") from exc


def write_tokenizer_files(folder: Path, out: Path) -> str:
    """Rebuild the tokenizer from the GGUF metadata and save it to `out`: tokenizer.json,
    tokenizer_config.json (special tokens) and chat_template.jinja when the file has one.

    Returns:
        "tokenizer.json".

    Raises:
        ArtifactError: transformers cannot rebuild a fast tokenizer from the metadata.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **pretrained_kwargs(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"transformers could not rebuild the tokenizer of {folder}'s GGUF file: {exc}") from exc
    tokenizer.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise ArtifactError(f"{type(tokenizer).__name__} wrote no tokenizer.json: the engine reads tokenizer.json only")
    return "tokenizer.json"
