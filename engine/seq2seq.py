"""An encoder-decoder artifact loaded for generation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from seqport.engine.config import GenerationConfig
from seqport.engine.feeds import Signature
from seqport.engine.generation import decode_loop
from seqport.engine.inputs import (
    as_texts,
    check_ids,
    is_token_input,
    length_sorted_batches,
    pad_batch,
)
from seqport.engine.kv_cache import KVCache
from seqport.engine.manifest import Manifest
from seqport.engine.results import GenerationResult
from seqport.engine.runtime import Runtime
from seqport.engine.search import GreedySearch
from seqport.engine.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


class Seq2SeqModel:
    """Encoder once per request, decoder step in a loop with the KV cache.

    Built by `seqport.engine.load()`; holds one runtime per component.
    """

    def __init__(
        self, folder: Path, manifest: Manifest, tokenizer: TextTokenizer, runtimes: dict[str, Runtime]
    ) -> None:
        self.folder, self.manifest, self.tokenizer = folder, manifest, tokenizer
        self._encoder, self._decoder = runtimes["encoder"], runtimes["decoder"]
        kv = manifest.kv
        fixed = {"num_kv_heads": kv.num_kv_heads, "head_dim": kv.head_dim, "vocab_size": manifest.vocab_size}
        self._sig = {
            name: Signature(manifest.components[name], kv.num_layers, fixed)
            for name in ("encoder", "decoder")
        }
        self.default_config = GenerationConfig.from_defaults(manifest.generation)

    def generate(
        self,
        inputs: str | Sequence[str] | Sequence[Sequence[int]],
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Generate for a text, a list of texts, or a list of source token-id lists.

        Args:
            inputs: text(s), or token ids (each list already holds the special tokens).
            config: decoding options; defaults come from the manifest.
            **overrides: GenerationConfig fields to change for this call.

        Returns:
            One result per input, in input order; `text` is filled for every input.

        Raises:
            InputError: empty or over-long inputs, ids outside the vocabulary.
            ConfigError / TypeError: invalid or unknown options.
        """
        config = (config or self.default_config).replace(**overrides)
        if is_token_input(inputs):
            batch = [list(map(int, row)) for row in inputs]
        else:
            batch = self.tokenizer.encode(as_texts(inputs))
        results = self.generate_ids(batch, config)
        return [
            GenerationResult([replace(s, text=self.tokenizer.decode(s.ids)) for s in r.sequences])
            for r in results
        ]

    def generate_ids(
        self, batch: Sequence[Sequence[int]], config: GenerationConfig
    ) -> list[GenerationResult]:
        """Token ids in, token ids out: the core the text API wraps."""
        m = self.manifest
        batch = check_ids(
            batch, m.vocab_size, m.max_positions, config.truncate, keep_last=tuple(m.special_ids.eos)
        )
        config = self._fit_length(config)
        results: list[GenerationResult | None] = [None] * len(batch)
        for indices in length_sorted_batches(batch, config.batch_size):
            for index, result in zip(indices, self._generate_batch([batch[i] for i in indices], config)):
                results[index] = result
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch: list[list[int]], config: GenerationConfig) -> list[GenerationResult]:
        ids, mask = pad_batch(batch, self.manifest.special_ids.pad or 0)
        cross = self.encode(ids, mask)
        eos = config.eos_token_ids or tuple(self.manifest.special_ids.eos)
        search = GreedySearch(len(batch), eos, config.max_new_tokens)
        kv = self.manifest.kv
        rows = len(search.row_sources())
        cache = KVCache.empty(rows, kv.num_layers, kv.num_kv_heads, kv.head_dim, kv.dtype)
        first = np.full((len(batch), 1), self._start_id(), dtype=np.int64)  # (B, 1)
        return decode_loop(_Stepper(self, mask, cross), search, cache, first)

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """int64 (B, S) → cross_key.{i} / cross_value.{i}: (B, H_kv, S, D) and the hidden states."""
        sig = self._sig["encoder"]
        feeds = sig.feeds({"input_ids": input_ids, "attention_mask": attention_mask})
        return sig.by_logical(self._encoder.run(feeds))

    def decoder_step(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One decoder call on logical feeds; returns logical outputs (logits, present_*)."""
        sig = self._sig["decoder"]
        return sig.by_logical(self._decoder.run(sig.feeds(values)))

    def _start_id(self) -> int:
        ids = self.manifest.special_ids
        return ids.decoder_start if ids.decoder_start is not None else (ids.bos or 0)

    def _fit_length(self, config: GenerationConfig) -> GenerationConfig:
        limit = self.manifest.max_positions
        if config.max_new_tokens > limit:
            logger.warning(
                "max_new_tokens %d capped to the model's %d positions", config.max_new_tokens, limit
            )
            return config.replace(max_new_tokens=limit)
        return config


class _Stepper:
    """The loop's step function: selects the encoder outputs of the active rows, runs the
    decoder for the last position's logits and stores the present K/V in the cache."""

    def __init__(self, model: Seq2SeqModel, mask: np.ndarray, cross: dict[str, np.ndarray]) -> None:
        self._model, self._all_mask = model, mask
        self._all_cross = {k: v for k, v in cross.items() if k.startswith("cross_")}
        self._sources = np.arange(mask.shape[0])
        self._mask, self._cross = mask, self._all_cross

    def __call__(self, tokens: np.ndarray, cache: KVCache, sources: np.ndarray) -> np.ndarray:
        if len(sources) != len(self._sources) or np.any(sources != self._sources):
            self._sources = sources  # rows left or beams regrouped: re-select encoder outputs once
            self._mask = self._all_mask[sources]
            self._cross = {k: v[sources] for k, v in self._all_cross.items()}
        keep_last = np.array([tokens.shape[1] - 1], dtype=np.int64)
        outputs = self._model.decoder_step(
            {
                "input_ids": tokens,
                "encoder_attention_mask": self._mask,
                "logits_positions": keep_last,
                **self._cross,
                **cache.feeds(),
            }
        )
        cache.update(outputs)
        return outputs["logits"][:, -1, :]  # (N, V)
