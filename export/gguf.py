"""GGUF checkpoints in: transformers' GGUF loading, at export time only.

A source is a GGUF checkpoint when it is a `.gguf` file, or a folder without config.json that
holds exactly one. transformers (`from_pretrained(folder, gguf_file=...)`, which needs the
`gguf` and `accelerate` packages) reads the config, dequantizes the weights to float32 and
rebuilds the tokenizer (with its chat template and special tokens) from the GGUF metadata; the
family adapters then export that model like any other.

The weights are loaded tensor by tensor (`load_model`): transformers' own GGUF loading
dequantizes every tensor into a dict and then loads it into the model, which peaks at about
twice the float32 weights; here the file is memory-mapped, each tensor dequantized in row
chunks, with transformers' name mapping and tensor processing (e.g. the Llama q/k
permutation), and the model takes the tensors as they are (one float32 copy).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from seqport.engine.errors import ArtifactError, ExportError

logger = logging.getLogger(__name__)
SUFFIX = ".gguf"
#: rows dequantized at once: bounds the float64/int temporaries of gguf's numpy dequantizers.
CHUNK_ROWS = 2048
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


def load_model(folder: Path, auto_class: str, dtype: Any):
    """The model of `folder`'s GGUF file, its weights dequantized tensor by tensor to `dtype`.

    Raises:
        ExportError: the file lacks a weight the model has.
    """
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    path = folder / pretrained_kwargs(folder)["gguf_file"]
    config = transformers.AutoConfig.from_pretrained(str(folder), gguf_file=path.name)
    cls = getattr(transformers, auto_class)._model_mapping[type(config)]
    arch, tensors = _raw_tensors(path)
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config.to_dict())
    with torch.device("meta"):
        names = get_gguf_hf_weights_map(cls(config), processor)
    state: dict[str, torch.Tensor] = {}
    extra = {"tensor_key_mapping": names, "parsed_parameters": {"tensors": state}}  # as transformers passes them
    for name, ggml_type, raw in tensors:
        result = processor.process(weights=_dequantize(raw, ggml_type), name=name, **extra)
        if result.name in names:
            state[names[result.name]] = torch.from_numpy(_owned(result.weights)).to(dtype)
    model = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    del state
    if any(p.is_meta for p in model.parameters()):
        raise ExportError(f"{path} lacks weights {cls.__name__} needs: it cannot be exported")
    return model


def _raw_tensors(path: Path) -> tuple[str, Iterator[tuple[str, int, np.ndarray]]]:
    """The file's architecture, and its tensors as (GGUF name, ggml type, stored data (..., row
    bytes)), each memory-mapped only while it is read (its pages leave with the map)."""
    try:
        from transformers.integrations.gguf.reader import GgufHeader
    except ImportError:  # older transformers: gguf's reader, which parses all the metadata up front
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import read_field

        reader = GGUFReader(str(path))
        return read_field(reader, "general.architecture")[0], ((t.name, t.tensor_type, t.data) for t in reader.tensors)
    header = GgufHeader.from_file(str(path))

    def mapped() -> Iterator[tuple[str, int, np.ndarray]]:
        for info in header.tensors:
            raw = np.memmap(path, np.uint8, "r", offset=header.data_start + info.offset, shape=(info.nbytes,))
            rows = math.prod(info.shape[:-1])
            yield info.name, info.ggml_type, raw.reshape(*info.shape[:-1], info.nbytes // rows)

    return header.architecture, mapped()


def _dequantize(data: np.ndarray, ggml_type: int) -> np.ndarray:
    """One GGUF tensor's stored data (..., row bytes) as float32 (..., row), CHUNK_ROWS rows at a time."""
    from gguf import GGMLQuantizationType, dequantize

    qtype = GGMLQuantizationType(ggml_type)
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        return dequantize(data, qtype)
    rows = data.reshape(-1, data.shape[-1])
    first = dequantize(rows[:1], qtype)
    out = np.empty((rows.shape[0], first.shape[-1]), dtype=np.float32)
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = dequantize(rows[start : start + CHUNK_ROWS], qtype)
    return out.reshape(*data.shape[:-1], first.shape[-1])


def _owned(weights: np.ndarray) -> np.ndarray:
    """`weights` itself when it is a writable C-contiguous float32 array, else a copy that is
    (a memory-mapped F32 tensor is read-only; a transposed one is a view)."""
    if weights.flags.c_contiguous and weights.flags.writeable and weights.dtype == np.float32:
        return weights
    return np.array(weights, dtype=np.float32, order="C")
