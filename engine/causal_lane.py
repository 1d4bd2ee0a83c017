"""The host's short way through a decode step of a decoder-only model on preallocated KV
buffers (issue #16: the 2-thread SmolLM2 step).

Between two decoder calls the CPU caches are cold, so the engine's share of a step is set by how
many Python and numpy operations it makes (docs/benchmarks.md, "Engine overhead"). The general
step (causal_lm._CausalStep) maps logical names to graph names, checks the feeds, builds the
cache's feed dict with a new cache_position, and the runtime wraps and binds the new small
inputs and allocates the logits, every step. Once a step has gone that way with the rows of the
step before, only four small values change, all made by the engine; the lane keeps one set of
graph-named feeds over buffers it owns and writes those values in place:

    ids[:, 0] = tokens (N,); positions += 1 (N, 1); mask[:, P] = 1 (N, C); cache_position[0] = P
    runtime.run(feeds, into)   # the same arrays every step: bound once (runtimes/ort_binding.py)

The present K/V go into the cache's buffers, the logits (N, 1, V) and the greedy head's ids and
log-probabilities into the lane's own: a step allocates nothing but the two (N,) arrays the
search keeps. The mask is causal_inputs.CausalInputs's own array, so the general step and the
lane mark the same slots. Any other case (rows leaving or reordered, a runtime that does not
write in place, a decoder with other inputs) takes the general step.
"""

from __future__ import annotations

import numpy as np

from seqport.engine.device_array import Chosen
from seqport.engine.feeds import Signature
from seqport.engine.kv_cache import KVCache, layer_names
from seqport.engine.runtime import Runtime

#: the decoder inputs besides the cache that the lane writes.
STEP_INPUTS = ("input_ids", "attention_mask", "position_ids", "cache_position", "logits_positions")


class CausalLane:
    """A request's decoder feeds and output buffers kept between its steps (see the module doc).

    Args:
        signature: the decoder's signature (logical → graph names).
        runtime: the loaded decoder.
        num_layers: decoder layers.
        vocab_size: V, the logits' last axis.
        graph_greedy: return the greedy head's `Chosen` instead of the last position's logits.
    """

    def __init__(
        self, signature: Signature, runtime: Runtime, num_layers: int, vocab_size: int, graph_greedy: bool
    ) -> None:
        inputs, outputs = signature.inputs, signature.outputs
        self._signature, self._runtime, self._vocab = signature, runtime, vocab_size
        self._names = tuple(inputs[name].name for name in STEP_INPUTS)
        self._past = tuple(inputs[name].name for name in layer_names("past", num_layers))  # keys, then values
        self._present = tuple(outputs[name].name for name in layer_names("present", num_layers))
        self._logits = outputs["logits"]
        head = "greedy_ids" in outputs and "greedy_logprobs" in outputs
        self._head = (outputs["greedy_ids"].name, outputs["greedy_logprobs"].name) if head else None
        self._graph_greedy = graph_greedy and head
        self._feeds: dict[str, np.ndarray] = {}
        self._small: tuple[np.ndarray, ...] = ()  # the STEP_INPUTS arrays of `_feeds`, in that order
        self._into: dict[str, np.ndarray] = {}
        self._held: tuple[object, object, object] = (None, None, None)  # rows, first K buffer, mask
        self._in_place = True  # False once the runtime returned new arrays instead of writing in place

    @classmethod
    def for_decoder(
        cls, signature: Signature, runtime: Runtime, num_layers: int, vocab_size: int, graph_greedy: bool
    ) -> CausalLane | None:
        """A lane for this decoder, or None when it takes inputs the lane does not write."""
        known = set(STEP_INPUTS) | set(layer_names("past", num_layers))
        if set(signature.inputs) != known or "logits" not in signature.outputs:
            return None
        return cls(signature, runtime, num_layers, vocab_size, graph_greedy)

    def holds(self, sources: np.ndarray, cache: KVCache, mask: np.ndarray | None, new: int) -> bool:
        """Whether the next step is the lane's: one token for the adopted rows, buffers and mask."""
        rows, key, held_mask = self._held
        return new == 1 and self._in_place and sources is rows and cache.keys[0] is key and mask is held_mask

    def adopt(self, sources: np.ndarray, cache: KVCache, mask: np.ndarray, positions: np.ndarray) -> None:
        """Keep the feeds of a one-token step that just ran checked: its rows `sources` (N,), the
        preallocated `cache`, the (N, C) `mask` the step inputs mark in place and the step's
        int64 (N, 1) `positions`."""
        rows = len(sources)
        small = (
            np.zeros((rows, 1), dtype=np.int64),  # input_ids (N, 1)
            mask,  # (N, C)
            np.array(positions, dtype=np.int64, copy=True),  # (N, 1): the step's, += 1 per step
            np.zeros(1, dtype=np.int64),  # cache_position (1,)
            np.zeros(1, dtype=np.int64),  # logits_positions: the one new token's, [0]
        )
        self._small = small
        buffers = cache.keys + cache.values
        self._feeds = {**dict(zip(self._names, small)), **dict(zip(self._past, buffers))}
        self._into = dict(zip(self._present, buffers))
        dtype = np.dtype(self._logits.dtype)
        self._into[self._logits.name] = np.zeros((rows, 1, self._vocab), dtype=dtype)  # (N, 1, V)
        if self._head is not None:
            self._into[self._head[0]] = np.zeros(rows, dtype=np.int64)  # (N,)
            self._into[self._head[1]] = np.zeros(rows, dtype=np.float32)  # (N,)
        self._held = (sources, cache.keys[0], mask)
        self._last_logits = self._into[self._logits.name][:, -1, :]  # (N, V) view, made once

    def step(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray | Chosen:
        """One decoder call for int64 (N, 1) new tokens of the adopted rows; the cache then holds
        their K/V. Returns the head's Chosen, or the last position's logits float (N, V) (a view
        of the lane's buffer: valid until the next step)."""
        feeds, past = self._feeds, cache.length
        ids, mask, positions, slot, _ = self._small
        ids[:] = tokens  # (N, 1)
        positions += 1  # (N, 1)
        mask[:, past] = 1  # the new token's slot
        slot[0] = past
        outputs = self._runtime.run(feeds, self._into)
        if outputs[self._present[0]] is self._into[self._present[0]]:
            cache.advance(1)
        else:  # a runtime that returns new arrays: the cache holds them, later steps go the general way
            cache.update(self._signature.by_logical(outputs), 1)
            self._in_place = False
        logits = outputs[self._logits.name]
        logits = self._last_logits if logits is self._into[self._logits.name] else logits[:, -1, :]  # (N, V)
        if self._graph_greedy:
            ids_name, logprobs_name = self._head  # type: ignore[misc]
            # copies of the (N,) buffers: the search keeps every step's ids and log-probabilities
            return Chosen(outputs[ids_name].copy(), outputs[logprobs_name].copy(), logits)
        return logits
