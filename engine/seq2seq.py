"""An encoder-decoder artifact: encoder once per request, decoder step in a loop."""

from __future__ import annotations

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.generation import StepFn
from seqport.engine.generative import GenerativeModel
from seqport.engine.inputs import pad_batch
from seqport.engine.kv_cache import KVCache
from seqport.engine.scoring import ScoreResult, target_logprobs, teacher_forcing_inputs


class Seq2SeqModel(GenerativeModel):
    """Encoder-decoder generation (seed Transformer, T5, BART, Marian, ...)."""

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """int64 (B, S) → encoder_hidden_states (B, S, d) and cross_key.{i} / cross_value.{i}
        (B, H_kv, S, D)."""
        return self.run("encoder", {"input_ids": input_ids, "attention_mask": attention_mask})

    def decoder_step(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One decoder call on logical feeds; returns logits and present_key/value.{i}."""
        return self.run("decoder", values)

    def _prepare(self, batch: list[list[int]], config: GenerationConfig) -> tuple[np.ndarray, StepFn]:
        ids, mask = pad_batch(batch, self.manifest.special_ids.pad or 0)
        cross = {k: v for k, v in self.encode(ids, mask).items() if k.startswith("cross_")}
        start = [self._start_id(), *config.prefix_ids]  # a forced target prefix follows the start token
        first = np.tile(np.array(start, dtype=np.int64), (len(batch), 1))  # (B, 1 + prefix)
        return first, _Stepper(self, mask, cross)

    def _score_batch(self, sources: list[list[int]], targets: list[list[int]]) -> list[ScoreResult]:
        """One encoder and one decoder call (logits at every position) for the whole batch."""
        ids, mask = pad_batch(sources, self.manifest.special_ids.pad or 0)
        cross = {k: v for k, v in self.encode(ids, mask).items() if k.startswith("cross_")}
        tokens = teacher_forcing_inputs(targets, [self._start_id()], self.manifest.special_ids.pad or 0)  # (B, T)
        cache = self.new_cache(len(targets), tokens.shape[1])
        feeds = {"input_ids": tokens, "encoder_attention_mask": mask, "logits_positions": np.arange(tokens.shape[1])}
        logits = self.run_decoder({**feeds, **cross}, cache)["logits"]  # (B, T, V)
        return target_logprobs(logits, targets, offset=0)

    def _start_id(self) -> int:
        ids = self.manifest.special_ids
        return ids.decoder_start if ids.decoder_start is not None else (ids.bos or 0)


class _Stepper:
    """The loop's step function: selects the encoder outputs of the active rows, runs the
    decoder for the last position's logits and stores the present K/V in the cache."""

    def __init__(self, model: Seq2SeqModel, mask: np.ndarray, cross: dict[str, np.ndarray]) -> None:
        self._model, self._all_mask, self._all_cross = model, mask, cross
        self._sources = np.arange(mask.shape[0])
        self._mask, self._cross = mask, cross
        self._checked: dict | None = None  # the cross K/V dict the last step's feeds check passed
        self._checked_cross = frozenset(cross)

    def __call__(self, tokens: np.ndarray, cache: KVCache, sources: np.ndarray) -> np.ndarray:
        if len(sources) != len(self._sources) or np.any(sources != self._sources):
            self._sources = sources  # rows left or beams regrouped: re-select encoder outputs once
            self._mask = self._all_mask[sources]
            self._cross = {k: v[sources] for k, v in self._all_cross.items()}
        values = {
            "input_ids": tokens,
            "encoder_attention_mask": self._mask,
            "logits_positions": np.array([tokens.shape[1] - 1], dtype=np.int64),
            **self._cross,
        }
        trusted = self._checked_cross if self._cross is self._checked else frozenset()
        logits = self._model.run_decoder(values, cache, trusted)["logits"][:, -1, :]  # (N, V)
        self._checked = self._cross  # checked with this step's feeds: the same arrays need no re-check
        return logits
