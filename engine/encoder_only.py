"""An encoder-only artifact (BERT, RoBERTa, ...): one encoder call per batch, then pooled
embeddings or class probabilities, computed in numpy as the manifest says.

Shapes: N inputs, B batch, S sequence, d hidden size, L labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqport.engine.errors import ConfigError
from seqport.engine.feeds import Signature
from seqport.engine.inputs import as_texts, check_ids, is_token_input, length_sorted_batches, pad_batch
from seqport.engine.manifest import Manifest
from seqport.engine.runtime import Runtime
from seqport.engine.tokenizer import TextTokenizer

FEATURE_EXTRACTION, SEQUENCE_CLASSIFICATION = "feature-extraction", "sequence-classification"
Inputs = str | Sequence[str] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class Classification:
    """The class of one input.

    Args:
        label: the most probable label (the model's id2label).
        index: its index in the logits.
        score: its probability.
        probabilities: every label's probability (softmax of the logits), in logits order.
    """

    label: str
    index: int
    score: float
    probabilities: dict[str, float]


def pool(hidden: np.ndarray, mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Pool token vectors over the real (mask 1) positions, as sentence-transformers' Pooling does.

    Args:
        hidden: float32 (B, S, d) last hidden state.
        mask: int64 (B, S) attention mask; padding positions never count.
        modes: any of "cls", "max", "mean", "mean_sqrt_len"; results are concatenated in this order.

    Returns:
        float32 (B, len(modes) * d).
    """
    weights = mask[..., None].astype(hidden.dtype)  # (B, S, 1)
    count = np.maximum(weights.sum(axis=1), 1e-9)  # (B, 1)
    total = (hidden * weights).sum(axis=1)  # (B, d)
    pooled = {
        "cls": lambda: hidden[:, 0],
        "max": lambda: np.where(weights > 0, hidden, np.float32(-1e9)).max(axis=1),
        "mean": lambda: total / count,
        "mean_sqrt_len": lambda: total / np.sqrt(count),
    }
    order = [mode for mode in ("cls", "max", "mean", "mean_sqrt_len") if mode in modes]
    return np.concatenate([pooled[mode]() for mode in order], axis=1).astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """float32 (N, d) rows scaled to unit length (rows of zeros stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 (N, L) logits → probabilities over the last axis."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


class EncoderModel:
    """A loaded encoder-only artifact; built by `seqport.engine.load()`.

    An artifact is exported for one task: "feature-extraction" (`embed`) or
    "sequence-classification" (`classify`); `task` says which.
    """

    def __init__(
        self, folder: Path, manifest: Manifest, tokenizer: TextTokenizer, runtimes: dict[str, Runtime]
    ) -> None:
        self.folder, self.manifest, self.tokenizer, self.runtimes = folder, manifest, tokenizer, runtimes
        self.signature = Signature(manifest.components["encoder"], 0, {})
        outputs = manifest.components["encoder"].outputs
        self.task = FEATURE_EXTRACTION if "last_hidden_state" in outputs else SEQUENCE_CLASSIFICATION

    @property
    def labels(self) -> list[str]:
        """Label names in logits order (classification artifacts; empty otherwise)."""
        return list(self.manifest.labels)

    @property
    def dimension(self) -> int:
        """Size of one embedding (feature-extraction artifacts; 0 otherwise)."""
        return self.manifest.pooling.dimension if self.manifest.pooling else 0

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Run the encoder on a padded batch.

        Args:
            input_ids, attention_mask: int64 (B, S), right-padded with the pad id.

        Returns:
            {"last_hidden_state": float32 (B, S, d)} or {"logits": float32 (B, L)}.

        Raises:
            InputError: wrong dtypes, ranks or disagreeing shapes.
        """
        values = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.signature.inputs:
            values["token_type_ids"] = np.zeros_like(input_ids)  # one segment per input
        return self.signature.by_logical(self.runtimes["encoder"].run(self.signature.feeds(values)))

    def embed(
        self, inputs: Inputs, *, normalize: bool | None = None, batch_size: int = 32, truncate: bool = False
    ) -> np.ndarray:
        """One vector per input, pooled (and normalised) the way the exported model declares.

        Args:
            inputs: a text, texts, or token-id lists (each already holding its special tokens).
            normalize: L2-normalise; None uses the manifest's choice (True for most sentence models).
            batch_size: inputs per encoder call, longest first (0: all at once).
            truncate: cut inputs longer than the model's maximum instead of failing.

        Returns:
            float32 (N, dimension), in input order.

        Raises:
            ConfigError: the artifact was exported for classification, or a bad batch_size.
            InputError: empty or over-long inputs, ids outside the vocabulary.
        """
        self._require(FEATURE_EXTRACTION, "embed")
        pooling = self.manifest.pooling
        assert pooling is not None  # the manifest check guarantees it for feature extraction

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return pool(self.encode(ids, mask)["last_hidden_state"], mask, pooling.modes)

        vectors = self._map(inputs, batch_size, truncate, run)
        return l2_normalize(vectors) if (pooling.normalize if normalize is None else normalize) else vectors

    def classify(self, inputs: Inputs, *, batch_size: int = 32, truncate: bool = False) -> list[Classification]:
        """The most probable label of each input, with every label's probability.

        Args:
            inputs: a text, texts, or token-id lists.
            batch_size: inputs per encoder call, longest first (0: all at once).
            truncate: cut inputs longer than the model's maximum instead of failing.

        Returns:
            One Classification per input, in input order.

        Raises:
            ConfigError: the artifact was exported for feature extraction, or a bad batch_size.
            InputError: empty or over-long inputs, ids outside the vocabulary.
        """
        self._require(SEQUENCE_CLASSIFICATION, "classify")
        probs = softmax(self._map(inputs, batch_size, truncate, lambda ids, mask: self.encode(ids, mask)["logits"]))
        labels = self.labels
        results = []
        for row in probs:
            best = int(row.argmax())
            results.append(Classification(labels[best], best, float(row[best]), dict(zip(labels, map(float, row)))))
        return results

    def input_ids(self, inputs: Inputs) -> list[list[int]]:
        """Token-id lists as given, or texts tokenized with the artifact's tokenizer."""
        if is_token_input(inputs):
            return [list(map(int, row)) for row in inputs]
        return self.tokenizer.encode(as_texts(inputs))

    def _map(
        self, inputs: Inputs, batch_size: int, truncate: bool, run: Callable[[np.ndarray, np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Check and batch the inputs, `run` each padded batch, and put the rows back in input order."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ConfigError(f"batch_size must be an int >= 0 (0: all inputs at once), got {batch_size!r}")
        m = self.manifest
        batch = check_ids(self.input_ids(inputs), m.vocab_size, m.max_positions, truncate, tuple(m.special_ids.eos))
        rows: np.ndarray | None = None
        for indices in length_sorted_batches(batch, batch_size):
            ids, mask = pad_batch([batch[i] for i in indices], m.special_ids.pad or 0)  # int64 (B, S)
            values = run(ids, mask)  # (B, ...)
            if rows is None:
                rows = np.empty((len(batch), *values.shape[1:]), dtype=np.float32)
            rows[indices] = values
        assert rows is not None  # check_ids rejects an empty batch
        return rows

    def _require(self, task: str, method: str) -> None:
        if self.task != task:
            other = "classify" if method == "embed" else "embed"
            raise ConfigError(
                f"{method}() needs an artifact exported with --task {task}; this one was exported for "
                f"{self.task}: call {other}(), or re-export with `seqport export --task {task}`"
            )
