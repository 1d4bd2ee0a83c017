"""What the HuggingFace encoder-decoder adapters (t5.py, bart.py, marian.py) share.

Loading a model folder with transformers, normalising its special ids and generation defaults
once into ModelSpec fields, turning its tokenizer into a tokenizer.json, and the attention
arithmetic every adapter drives with the HF modules' own weights. transformers is imported only
here and only when a HuggingFace folder is exported.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from seqport.engine.errors import ArtifactError, ExportError

logger = logging.getLogger(__name__)
TOKENIZER_FILE = "tokenizer.json"

#: generation_config.json fields copied as they are; their names are GenerationConfig's.
_COPIED = (
    "max_new_tokens",
    "min_new_tokens",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "bad_words_ids",
    "suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "num_return_sequences",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
)
#: fields with no seqport equivalent: logged when a checkpoint sets them, never silently dropped.
_UNSUPPORTED = (
    "begin_suppress_tokens",
    "encoder_no_repeat_ngram_size",
    "typical_p",
    "num_beam_groups",
    "exponential_decay_length_penalty",
)


#: transformers versions the HuggingFace adapters support: [first, stop) as (major, minor).
TRANSFORMERS_RANGE = ((4, 57), (6, 0))
SUPPORTED_TRANSFORMERS = ">=4.57,<6"


def check_transformers_version(version: str) -> None:
    """Refuse a transformers outside TRANSFORMERS_RANGE before any model is loaded.

    Raises:
        ExportError: one line naming the installed and the supported versions.
    """
    parts = re.match(r"(\d+)\.(\d+)", version)
    first, stop = TRANSFORMERS_RANGE
    if parts is None or not first <= (int(parts[1]), int(parts[2])) < stop:
        raise ExportError(
            f"transformers {version} is installed; seqport exports HuggingFace models with transformers "
            f"{SUPPORTED_TRANSFORMERS}: pip install 'transformers{SUPPORTED_TRANSFORMERS}'"
        )


def load_hf_model(folder: Path, model_types: tuple[str, ...], auto_class: str = "AutoModelForSeq2SeqLM"):
    """Load a HuggingFace model folder (or a folder holding one GGUF file, export/gguf.py) with
    `transformers.<auto_class>` in float32, eval mode.

    Raises:
        ExportError: transformers is missing or outside SUPPORTED_TRANSFORMERS, cannot load the
            folder, or the model_type is not one of `model_types`.
    """
    try:
        import transformers
    except ImportError:
        raise ExportError("exporting a HuggingFace model needs transformers: pip install 'seqport[hf]'") from None
    check_transformers_version(transformers.__version__)
    from seqport.export import gguf

    try:
        if gguf.pretrained_kwargs(folder):  # tensor by tensor: one float32 copy (export/gguf.py)
            model = gguf.load_model(folder, auto_class, torch.float32)
        else:
            model = getattr(transformers, auto_class).from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"transformers could not load {folder}: {first}") from exc
    if model.config.model_type not in model_types:
        raise ExportError(
            f"{folder} holds a {model.config.model_type!r} model; this adapter exports: {', '.join(model_types)}"
        )
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()  # a GGUF model is already float32, and transformers refuses .float() on it
    return model.eval()


def load_seq2seq(folder: Path, model_types: tuple[str, ...]):
    """An encoder-decoder folder (AutoModelForSeq2SeqLM)."""
    return load_hf_model(folder, model_types, "AutoModelForSeq2SeqLM")


def special_ids(model) -> dict[str, Any]:
    """eos (list), pad, bos, decoder_start from generation_config.json, else config.json.

    The decoder start falls back to bos, as transformers' generate() does.
    """
    gen, cfg = model.generation_config, model.config

    def pick(name: str):
        value = getattr(gen, name, None)
        return value if value is not None else getattr(cfg, name, None)

    eos = pick("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    start = pick("decoder_start_token_id")
    if start is None:
        start = pick("bos_token_id")
    return {"eos": eos, "pad": pick("pad_token_id"), "bos": pick("bos_token_id"), "decoder_start": start}


def generation_defaults(model) -> dict[str, Any]:
    """GenerationConfig defaults from the values generation_config.json (or config.json) sets.

    transformers counts the decoder start in `max_length`/`min_length` of an encoder-decoder;
    seqport counts new tokens only, hence the `- 1`.
    """
    given = {k: v for k, v in model.generation_config.to_diff_dict().items() if v is not None}
    out = {name: given[name] for name in _COPIED if name in given}
    if "max_new_tokens" not in out and given.get("max_length", 0) > 1:
        out["max_new_tokens"] = given["max_length"] - 1
    if "min_new_tokens" not in out and given.get("min_length", 0) > 1:
        out["min_new_tokens"] = given["min_length"] - 1
    if not out.get("do_sample"):
        for name in ("temperature", "top_k", "top_p"):  # used only when sampling
            out.pop(name, None)
    elif "top_k" not in out:
        out["top_k"] = 50  # transformers' default when sampling; seqport's default is off
    if out.get("num_beams", 1) == 1:
        out.pop("early_stopping", None)  # a beam-only option transformers ignores without beams
        out.pop("length_penalty", None)
    ignored = sorted(name for name in _UNSUPPORTED if name in given)
    if ignored:
        logger.warning("generation options with no seqport equivalent are not exported: %s", ", ".join(ignored))
    return out


def write_tokenizer(folder: Path, out: Path) -> str:
    """Copy `folder`/tokenizer.json to `out`, or convert the folder's slow tokenizer into one.

    Returns:
        The file name written in `out`.

    Raises:
        ArtifactError: no tokenizer.json and transformers cannot build a fast tokenizer.
    """
    target = out / TOKENIZER_FILE
    if (folder / TOKENIZER_FILE).is_file():
        shutil.copyfile(folder / TOKENIZER_FILE, target)
        return TOKENIZER_FILE
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # tokenizer classes raise anything from OSError to protobuf errors
        raise ArtifactError(
            f"{folder} has no tokenizer.json and transformers could not load its tokenizer ({exc}). "
            "Save one with `AutoTokenizer.from_pretrained(...).save_pretrained(folder)`."
        ) from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ArtifactError(
            f"{folder} has no tokenizer.json and {type(tokenizer).__name__} has no tokenizers converter; "
            "the engine reads tokenizer.json only. Add one to the folder and export again."
        )
    backend.save(str(target))
    return TOKENIZER_FILE


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.reshape(b, t, num_heads, head_dim).transpose(1, 2)  # (B, T, H*D) -> (B, H, T, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with q (B, H, T, D), k/v (B, H, S, D) → (B, T, H*D)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + bias  # (B, H, T, S)
    out = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2)  # (B, T, H, D)
    return out.reshape(out.shape[0], out.shape[1], -1)


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int64 (B, S) 1 = token, 0 = pad → additive (B, 1, 1, S)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """T5LayerNorm / LlamaRMSNorm (weight · x / sqrt(mean(x²) + eps)) written with Div, not
    x · rsqrt: exported, rsqrt becomes Sqrt + Reciprocal, which onnxruntime does not fuse,
    while Pow → ReduceMean → Add → Sqrt → Div becomes one SimplifiedLayerNormalization
    (six nodes per norm fewer every decoder step)."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return norm.weight * (x.float() / torch.sqrt(variance + norm.variance_epsilon)).to(x.dtype)
