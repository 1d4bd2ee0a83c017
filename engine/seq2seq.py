"""An encoder-decoder artifact: encoder once per request, decoder step in a loop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.decoder_step import DecoderStep, RunDecoder
from seqport.engine.device_array import Candidates, Chosen
from seqport.engine.generating_model import GeneratingModel
from seqport.engine.inputs import pad_batch
from seqport.engine.kv_cache import KVCache
from seqport.engine.placement import Placement, Selection, Value
from seqport.engine.scoring import ScoreResult, target_logprobs, teacher_forcing_inputs
from seqport.engine.step_inputs import LockstepInputs


class Seq2SeqModel(GeneratingModel):
    """Encoder-decoder generation (seed Transformer, T5, BART, Marian, ...)."""

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """int64 (B, S) → encoder_hidden_states (B, S, d) and cross_key.{i} / cross_value.{i}
        (B, H_kv, S, D), on the model's placement (numpy on the host)."""
        return self.run("encoder", {"input_ids": input_ids, "attention_mask": attention_mask})

    def _prepare(self, batch: list[list[int]], config: GenerationConfig) -> tuple[np.ndarray, DecoderStep]:
        ids, mask = pad_batch(batch, self.manifest.special_ids.pad or 0)
        cross = self._cross(ids, mask)
        start = [self._start_id(), *config.prefix_ids]  # a forced target prefix follows the start token
        first = np.tile(np.array(start, dtype=np.int64), (len(batch), 1))  # (B, 1 + prefix)
        step = _Seq2SeqStep(self.run_decoder, self.placement, self._selection(config), mask, cross)
        declared = self.manifest.components["decoder"].inputs
        step.takes_positions, step.takes_mask = "position_ids" in declared, "attention_mask" in declared
        step.lockstep = self.lockstep
        return first, step

    def decoder_prompt(self, input_ids: Sequence[int], config: GenerationConfig) -> list[int]:
        return [self._start_id(), *config.prefix_ids]  # the encoder takes input_ids

    @property
    def row_positions(self) -> bool:
        """Whether the decoder takes per-row position_ids (B, T) and a self-attention
        attention_mask (B, P+T): rows at different steps can share a call (continuous batching)."""
        inputs = self.manifest.components["decoder"].inputs
        return "position_ids" in inputs and "attention_mask" in inputs

    def _score_batch(self, sources: list[list[int]], targets: list[list[int]]) -> list[ScoreResult]:
        """One encoder and one decoder call (logits at every position) for the whole batch."""
        ids, mask = pad_batch(sources, self.manifest.special_ids.pad or 0)
        cross = self._cross(ids, mask)
        tokens = teacher_forcing_inputs(targets, [self._start_id()], self.manifest.special_ids.pad or 0)  # (B, T)
        cache = self.new_cache(len(targets), tokens.shape[1])
        up = self.placement.upload
        feeds = {
            "input_ids": up(tokens, "input_ids"),
            "encoder_attention_mask": up(mask, "encoder_attention_mask"),
            "logits_positions": up(np.arange(tokens.shape[1]), "logits_positions"),
        }
        if "position_ids" in self.manifest.components["decoder"].inputs:
            feeds["position_ids"] = up(step_positions(0, tokens.shape), "position_ids")
        logits = self.run_decoder({**feeds, **cross}, cache)["logits"]  # (B, T, V)
        return target_logprobs(self.placement.fetch(logits, "logits"), targets, offset=0)

    def _cross(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, Value]:
        """The encoder's cross-attention K/V, where the placement keeps them (B, H_kv, S, D)."""
        up = self.placement.upload
        encoded = self.encode(up(ids, "input_ids"), up(mask, "attention_mask"))
        return {k: v for k, v in encoded.items() if k.startswith("cross_")}

    def _start_id(self) -> int:
        ids = self.manifest.special_ids
        return ids.decoder_start if ids.decoder_start is not None else (ids.bos or 0)


def step_positions(past: int, shape: tuple[int, ...]) -> np.ndarray:
    """int64 (B, T): each new token's position, past + arange(T) in every row."""
    return np.broadcast_to(np.arange(past, past + shape[1], dtype=np.int64), shape).copy()


class _Seq2SeqStep(DecoderStep):
    """Selects the encoder outputs of the active rows (once each time they change), runs the
    decoder for the last position and stores the present K/V in the cache. A decoder declaring
    position_ids (N, T) and attention_mask (N, P+T) gets views of per-request buffers
    (engine/step_inputs.py): no array is allocated per step."""

    takes_positions = False  # the decoder declares position_ids (B, T)
    takes_mask = False  # the decoder declares the self-attention attention_mask (B, P+T)
    lockstep: LockstepInputs | None = None  # the model's shared position/mask views

    def __init__(
        self,
        run_decoder: RunDecoder,
        placement: Placement,
        selection: Selection | None,
        mask: np.ndarray,
        cross: dict[str, Value],
    ) -> None:
        super().__init__(run_decoder, placement, selection)
        self._all_mask, self._all_cross = mask, cross  # (B, S) host; cross K/V on the placement
        self._sources = np.arange(mask.shape[0])
        self._mask, self._cross = placement.upload(mask, "encoder_attention_mask"), cross
        self._checked: dict | None = None  # the cross K/V dict the last step's feeds check passed
        # once a step's feeds passed the check, the next steps' engine-made values need none while
        # the rows stay (same cross K/V and mask objects; new tokens (N, 1) int64 from the search)
        self._checked_cross = frozenset(cross) | {
            "encoder_attention_mask", "input_ids", "logits_positions", "position_ids", "attention_mask"
        }

    def __call__(self, tokens: np.ndarray, cache: KVCache, sources: np.ndarray) -> np.ndarray | Candidates | Chosen:
        lane, same = self.lane, sources is self._sources
        if lane is not None and same and lane.ready:
            return lane.step(tokens, cache)  # the rows of the last checked step: the short way
        if not same:  # greedy search hands the same array while no row leaves (beam search never does)
            if lane is not None:
                lane.drop()
            if len(sources) != len(self._sources) or np.any(sources != self._sources):
                # rows left or beams regrouped: re-select encoder outputs once
                self._mask = self._placement.upload(self._all_mask[sources], "encoder_attention_mask")
                names = list(self._all_cross)
                self._cross = dict(zip(names, self._placement.take([self._all_cross[n] for n in names], sources)))
            self._sources = sources
        values = {
            "input_ids": self._placement.upload(tokens, "input_ids"),
            "encoder_attention_mask": self._mask,
            **self._cross,
        }
        if self.takes_positions or self.takes_mask:
            self._add_lockstep(values, tokens.shape, cache.length)
        trusted = self._checked_cross if self._cross is self._checked else frozenset()
        scores = self._decode(values, cache, trusted)  # (N, V), Candidates or Chosen
        self._checked = self._cross  # checked with this step's feeds: the same arrays need no re-check
        if lane is not None and same and tokens.shape[1] == 1 and self.takes_positions and self.takes_mask:
            lane.adopt(values, cache)  # rows that stayed for two steps: the next ones take engine/host_lane.py
        return scores

    def _add_lockstep(self, values: dict[str, Value], shape: tuple[int, ...], past: int) -> None:
        """position_ids (N, T) = past + arange(T) and an all-ones attention_mask (N, P+T)."""
        rows, new = shape
        if self.lockstep is None:  # a step built outside Seq2SeqModel._prepare
            self.lockstep = LockstepInputs(rows, past + new)
        up = self._placement.upload
        if self.takes_positions:
            values["position_ids"] = up(self.lockstep.positions(rows, past, new), "position_ids")
        if self.takes_mask:
            values["attention_mask"] = up(self.lockstep.mask(rows, past + new), "attention_mask")

    def release(self) -> None:
        super().release()
        if self.lane is not None:
            self.lane.drop()
        self._all_cross, self._cross = {}, {}  # the encoder's K/V: the largest per-request buffers

