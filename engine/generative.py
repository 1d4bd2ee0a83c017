"""What every generating artifact shares: inputs → batches → search → decode loop → results.

A model kind (encoder-decoder in seq2seq.py, decoder-only in causal_lm.py) only says how a
batch starts: its first tokens and the step function the loop calls (`_prepare`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.feeds import Signature
from seqport.engine.generation import StepFn, decode_loop
from seqport.engine.inputs import as_texts, check_ids, is_token_input, length_sorted_batches
from seqport.engine.kv_cache import KVCache
from seqport.engine.manifest import Manifest
from seqport.engine.results import GenerationResult
from seqport.engine.runtime import Runtime
from seqport.engine.search import make_search
from seqport.engine.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


class GenerativeModel:
    """Base of the loaded generating models; built by `seqport.engine.load()`."""

    def __init__(
        self, folder: Path, manifest: Manifest, tokenizer: TextTokenizer, runtimes: dict[str, Runtime]
    ) -> None:
        self.folder, self.manifest, self.tokenizer = folder, manifest, tokenizer
        self.runtimes = runtimes
        kv = manifest.kv
        fixed = {"num_kv_heads": kv.num_kv_heads, "head_dim": kv.head_dim, "vocab_size": manifest.vocab_size}
        self.signatures = {
            name: Signature(component, kv.num_layers, fixed)
            for name, component in manifest.components.items()
        }
        self.default_config = GenerationConfig.from_defaults(manifest.generation)

    def generate(
        self,
        inputs: str | Sequence[str] | Sequence[Sequence[int]],
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Generate for a text, a list of texts, or a list of token-id lists.

        Args:
            inputs: text(s), or token ids (each list already holds its special tokens).
            config: decoding options; defaults come from the manifest.
            **overrides: GenerationConfig fields to change for this call.

        Returns:
            One result per input, in input order, with `text` filled.

        Raises:
            InputError: empty or over-long inputs, ids outside the vocabulary.
            ConfigError / TypeError: invalid or unknown options.
        """
        config = (config or self.default_config).replace(**overrides)
        results = self.generate_ids(self.input_ids(inputs), config)
        return [
            GenerationResult([replace(s, text=self.tokenizer.decode(s.ids)) for s in r.sequences])
            for r in results
        ]

    def input_ids(self, inputs: str | Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token-id lists as given, or texts tokenized with the artifact's tokenizer."""
        if is_token_input(inputs):
            return [list(map(int, row)) for row in inputs]
        return self.tokenizer.encode(as_texts(inputs))

    def generate_ids(
        self, batch: Sequence[Sequence[int]], config: GenerationConfig
    ) -> list[GenerationResult]:
        """Token ids in, token ids out: the core the text API wraps."""
        m = self.manifest
        batch = check_ids(
            batch, m.vocab_size, m.max_positions, config.truncate, keep_last=tuple(m.special_ids.eos)
        )
        config = self._fit_length(config, max(len(ids) for ids in batch))
        results: list[GenerationResult | None] = [None] * len(batch)
        for indices in length_sorted_batches(batch, config.batch_size):
            chunk = self._generate_batch([batch[i] for i in indices], config)
            for index, result in zip(indices, chunk):
                results[index] = result
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch: list[list[int]], config: GenerationConfig) -> list[GenerationResult]:
        eos = config.eos_token_ids or tuple(self.manifest.special_ids.eos)
        search = make_search(config, len(batch), eos)
        first_tokens, step = self._prepare(batch, config)
        kv = self.manifest.kv
        cache = KVCache.empty(
            len(search.row_sources()), kv.num_layers, kv.num_kv_heads, kv.head_dim, kv.dtype
        )
        return decode_loop(step, search, cache, first_tokens)

    def run(self, component: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one component on logical feeds (checked first); returns logical outputs."""
        signature = self.signatures[component]
        return signature.by_logical(self.runtimes[component].run(signature.feeds(values)))

    def _prepare(self, batch: list[list[int]], config: GenerationConfig) -> tuple[np.ndarray, StepFn]:
        """First tokens int64 (B, T0) and the step function for one batch (per model kind)."""
        raise NotImplementedError

    def _positions_needed(self, longest_input: int) -> int:
        """Positions one generated token costs beyond the input; decoder-only models add the prompt."""
        return 0

    def _fit_length(self, config: GenerationConfig, longest_input: int) -> GenerationConfig:
        limit = self.manifest.max_positions - self._positions_needed(longest_input)
        if config.max_new_tokens > limit:
            logger.warning(
                "max_new_tokens %d capped to the model's %d positions", config.max_new_tokens, limit
            )
            return config.replace(max_new_tokens=max(limit, 1))
        return config
