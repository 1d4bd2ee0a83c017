"""A decoder-only request's attention_mask and position_ids, step by step, in O(rows) per decode
step instead of O(rows × context) (issue #16, long prompts).

`causal_lm.step_mask` derives both from the prompt mask every step: a new (N, P+T or C) mask
and a cumulative sum over every slot seen. After a 2048-token prompt that is work over 2k
slots per row and step for two numbers per row that change by one. `CausalInputs` makes the
mask once and then only marks the new tokens' slots; a generated token's position is the
row's real prompt tokens plus its offset after the prompt (what the cumulative sum gives).
Rows that change (a beam reorder, finished rows dropped) rebuild the mask once from the
prompt mask, as step_mask would.
"""

from __future__ import annotations

import numpy as np

from seqport.engine.kv_cache import KVCache

#: a growing cache's mask is made for this many more tokens at a time (then made again, wider).
GROWING_ROOM = 256


class CausalInputs:
    """Per-request step inputs of a decoder-only model, equal to `step_mask`'s.

    Args:
        prompt_mask: int64 (B, T0), 1 for prompt tokens, 0 for left padding.
        step_mask: causal_lm.step_mask (passed in: that module imports this one).
    """

    def __init__(self, prompt_mask: np.ndarray, step_mask) -> None:
        self._prompt = prompt_mask  # (B, T0)
        self._real = prompt_mask.sum(axis=1)  # (B,) real prompt tokens per row
        self._step_mask = step_mask
        self._mask: np.ndarray | None = None  # (N, W) the rows' mask so far, W = buffers' slots
        self._sources: np.ndarray | None = None  # the rows `_mask` holds

    @property
    def mask(self) -> np.ndarray | None:
        """The (N, W) mask array the decode steps mark in place (None before the first one)."""
        return self._mask

    def __call__(self, sources: np.ndarray, cache: KVCache, new: int) -> tuple[np.ndarray, np.ndarray]:
        """The step's attention_mask (N, P+T, or C for preallocated buffers) and position_ids (N, T).

        Args:
            sources: int (N,) the prompt row of each row; cache: the request's cache (P = its
                length); new: T, the step's new tokens.
        """
        past, width = cache.length, self._prompt.shape[1]
        if past < width:  # the prompt itself: the general path (once per request)
            return self._step_mask(self._prompt[sources], cache, new)
        seen = past + new
        if self._holds(sources, cache.capacity if cache.is_preallocated else None, seen):
            self._mask[:, past:seen] = 1  # only the new tokens' slots
        else:  # preallocated: the buffers' C slots; growing: room for GROWING_ROOM more tokens
            self._build(sources, cache.capacity if cache.is_preallocated else seen + GROWING_ROOM, seen)
        slots = np.arange(past - width, seen - width, dtype=np.int64)  # (T,) offsets after the prompt
        positions = self._real[sources][:, None] + slots[None, :]  # (N, T)
        if cache.is_preallocated:
            return self._mask, positions  # (N, C): slots after the written ones are 0
        return np.ascontiguousarray(self._mask[:, :seen]), positions  # (N, P+T): a view when N = 1

    def _build(self, sources: np.ndarray, slots: int, seen: int) -> None:
        """The rows' mask over `slots` slots: the prompt's, then ones up to `seen`, then zeros."""
        width = self._prompt.shape[1]
        self._mask = np.zeros((len(sources), max(slots, seen)), dtype=np.int64)  # (N, W)
        self._mask[:, :width] = self._prompt[sources]
        self._mask[:, width:seen] = 1
        self._sources = sources.copy()

    def _holds(self, sources: np.ndarray, slots: int | None, seen: int) -> bool:
        """Whether the held mask is of these rows and `slots` wide (None: at least `seen`)."""
        if self._mask is None or self._sources is None:
            return False
        wide = self._mask.shape[1] == slots if slots is not None else self._mask.shape[1] >= seen
        return wide and len(self._sources) == len(sources) and bool((self._sources == sources).all())
