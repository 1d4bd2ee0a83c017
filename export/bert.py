"""BERT, RoBERTa, XLM-RoBERTa and DistilBERT: HuggingFace encoder-only checkpoints as adapters.

The four differ only in facts normalised here once: which special tokens they use, whether
the graph takes token_type_ids (BERT), and how many positions RoBERTa's padding offset costs.
A sentence-transformers folder (modules.json, 1_Pooling/) also declares how to pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig

from seqport.engine.errors import ExportError
from seqport.export.encoder_only import (
    FEATURE_EXTRACTION,
    SEQUENCE_CLASSIFICATION,
    TASKS,
    EncoderSpec,
    read_sentence_transformers,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Traits:
    cls: str
    sep: str
    unk: str
    token_type_ids: bool
    position_offset: bool  # positions start after the pad id (RoBERTa's create_position_ids_from_input_ids)


_TRAITS = {
    "bert": _Traits("[CLS]", "[SEP]", "[UNK]", token_type_ids=True, position_offset=False),
    "distilbert": _Traits("[CLS]", "[SEP]", "[UNK]", token_type_ids=False, position_offset=False),
    "roberta": _Traits("<s>", "</s>", "<unk>", token_type_ids=False, position_offset=True),
    "xlm-roberta": _Traits("<s>", "</s>", "<unk>", token_type_ids=False, position_offset=True),
}


class HFEncoderAdapter:
    """A transformers encoder (base model or *ForSequenceClassification) behind EncoderOnlyAdapter."""

    def __init__(self, model: torch.nn.Module, spec: EncoderSpec) -> None:
        self.model = model.eval()
        self._spec = spec

    def spec(self) -> EncoderSpec:
        return self._spec

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """int64 (B, S) → last_hidden_state float32 (B, S, d) or logits float32 (B, L)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs)
        return out.logits if self._spec.task == SEQUENCE_CLASSIFICATION else out.last_hidden_state


def infer_task(config: PretrainedConfig) -> str:
    """sequence-classification for a *ForSequenceClassification checkpoint, else feature-extraction."""
    heads = [name for name in config.architectures or [] if name.endswith("ForSequenceClassification")]
    return SEQUENCE_CLASSIFICATION if heads else FEATURE_EXTRACTION


def _labels(config: PretrainedConfig) -> list[str]:
    if config.problem_type not in (None, "single_label_classification") or config.num_labels < 2:
        raise ExportError(
            f"problem_type {config.problem_type!r} with {config.num_labels} label(s) is not supported: "
            "seqport exports single-label classification (softmax over >= 2 labels)"
        )
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def _special_ids(folder: Path, traits: _Traits, config: PretrainedConfig) -> dict[str, int | None]:
    """CLS/SEP/UNK ids from the tokenizer (BERT configs do not hold them), else from config.json."""
    path = folder / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path)) if path.is_file() else None

    def lookup(token: str, fallback: int | None) -> int | None:
        found = tokenizer.token_to_id(token) if tokenizer else None
        return found if found is not None else fallback

    return {
        "bos": lookup(traits.cls, getattr(config, "bos_token_id", None)),
        "eos": lookup(traits.sep, getattr(config, "sep_token_id", None) or getattr(config, "eos_token_id", None)),
        "unk": lookup(traits.unk, None),
    }


def make_spec(folder: Path, config: PretrainedConfig, task: str) -> EncoderSpec:
    """Normalise a transformers config (and the folder's sentence-transformers files) once."""
    traits = _TRAITS[config.model_type]
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    max_positions = config.max_position_embeddings - (pad + 1 if traits.position_offset else 0)
    pooling, labels = None, []
    if task == FEATURE_EXTRACTION:
        pooling, max_seq_length = read_sentence_transformers(folder, config.hidden_size)
        max_positions = min(max_positions, max_seq_length or max_positions)
    else:
        labels = _labels(config)
    ids = _special_ids(folder, traits, config)
    return EncoderSpec(
        family=config.model_type,
        task=task,
        vocab_size=config.vocab_size,
        max_positions=max_positions,
        d_model=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        pad=pad,
        token_type_ids=traits.token_type_ids,
        eos=[ids["eos"]] if ids["eos"] is not None else [],
        bos=ids["bos"],
        unk=ids["unk"],
        labels=labels,
        pooling=pooling,
    )


def load(folder: Path, task: str | None = None) -> HFEncoderAdapter:
    """Load a BERT-like checkpoint folder for `task` (default: what config.json's architectures say).

    Raises:
        ExportError: an unknown task, a classification export without a trained head, or a
            checkpoint missing encoder weights.
    """
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    task = task or infer_task(config)
    if task not in TASKS:
        raise ExportError(f"task {task!r} is not supported; supported tasks are: {', '.join(TASKS)}")
    spec = make_spec(folder, config, task)
    model_class = AutoModelForSequenceClassification if task == SEQUENCE_CLASSIFICATION else AutoModel
    model, info = model_class.from_pretrained(
        folder, local_files_only=True, output_loading_info=True, dtype=torch.float32
    )
    missing = [key for key in info["missing_keys"] if not key.startswith("pooler.")]  # the pooler is unused
    if missing:
        hint = " (export with --task feature-extraction for embeddings)" if task == SEQUENCE_CLASSIFICATION else ""
        raise ExportError(f"{folder} has no trained weights for {', '.join(sorted(missing)[:5])}{hint}")
    return HFEncoderAdapter(model, spec)
