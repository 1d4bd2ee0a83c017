"""The rows of a continuously batched decoder: one growing KV cache, its mask, the encoder's values.

Rows join (a prefilled request's cache rows, merged in) and leave (finished or cancelled)
between two decoder steps, so they hold different numbers of real tokens. Every row's tokens
end at the last column (left padding): a row with fewer tokens than the cache's past length P
has leading zero slots whose mask is 0, and each row numbers its positions from its own first
real token, so a row computes what it would alone (Orca, Yu et al. OSDI 2022: iteration-level
scheduling). An encoder-decoder batch also holds each row's cross K/V and encoder mask, the
source axis right-padded to the longest source. Host numpy only; a preallocated cache is not
merged (its artifact micro-batches).
"""

from __future__ import annotations

import numpy as np

from seqport.engine.kv_cache import KVCache


def left_pad_slots(array: np.ndarray, width: int) -> np.ndarray:
    """(B, H, P, D) → (B, H, width, D) with width - P zero slots in front (width >= P)."""
    missing = width - array.shape[2]
    if missing == 0:
        return array
    zeros = np.zeros((array.shape[0], array.shape[1], missing, array.shape[3]), dtype=array.dtype)
    return np.concatenate([zeros, array], axis=2)


def left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    """int64 (B, P) → (B, width) with width - P leading zero columns."""
    return np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))


def right_pad_source(array: np.ndarray, width: int) -> np.ndarray:
    """An encoder value padded with zeros at the end of its source axis to `width`: the
    encoder_attention_mask (B, S) on axis 1, cross K/V (B, H, S, D) on axis 2."""
    axis = 1 if array.ndim == 2 else 2
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, width - array.shape[axis])
    return np.pad(array, pad)


def merge_encoder(held: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of `new` after those of `held` (same names: encoder_attention_mask int64 (B, S),
    cross_key.{i}/cross_value.{i} (B, H, S, D)); the shorter source is right-padded with zeros,
    which the encoder mask hides."""
    if not held:
        return dict(new)
    width = max(held["encoder_attention_mask"].shape[1], new["encoder_attention_mask"].shape[1])
    return {name: np.concatenate([right_pad_source(held[name], width), right_pad_source(new[name], width)])
            for name in held}


def keep_encoder(held: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `rows` of every encoder value, then the trailing source columns no row uses dropped."""
    if not held:
        return held
    taken = {name: np.take(array, rows, axis=0) for name, array in held.items()}
    used = np.flatnonzero(taken["encoder_attention_mask"].any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 0
    return {name: a[:, :width] if a.ndim == 2 else a[:, :, :width] for name, a in taken.items()}


class RunningBatch:
    """A growing self-attention cache, its attention mask and each row's next position.

    Args:
        num_layers: decoder layers (one key and one value array each).
        dtype: the cache's dtype (an empty batch makes zero-row arrays of it).
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: str = "float32") -> None:
        self.cache = KVCache.empty(0, num_layers, num_kv_heads, head_dim, dtype)
        self.mask = np.zeros((0, 0), dtype=np.int64)  # (N, P): 1 where a slot holds a real token
        self.positions = np.zeros(0, dtype=np.int64)  # (N,): the next token's position id per row
        self.encoder: dict[str, np.ndarray] = {}  # encoder-decoder: encoder mask and cross K/V per row

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def admit(self, cache: KVCache, mask: np.ndarray, encoder: dict[str, np.ndarray] | None = None) -> None:
        """Append rows prefilled on their own: `cache` (M, H, L, D) growing, `mask` int64 (M, L).

        The shorter of the running past P and L is left-padded to max(P, L) with masked zeros.
        `encoder`: an encoder-decoder's encoder_attention_mask and cross K/V of the new rows
        (see merge_encoder); every admission of a batch gives them or none does.

        Raises:
            ValueError: `cache` is preallocated, or its geometry differs (an engine bug).
        """
        if cache.is_preallocated:
            raise ValueError("a preallocated KV cache cannot join a running batch; micro-batch this artifact")
        width = max(self.mask.shape[1], mask.shape[1])
        keys = [np.concatenate([left_pad_slots(a, width), left_pad_slots(b, width)]) for a, b in
                zip(self.cache.keys, cache.keys)]
        values = [np.concatenate([left_pad_slots(a, width), left_pad_slots(b, width)]) for a, b in
                  zip(self.cache.values, cache.values)]
        self.cache = KVCache(keys, values)
        self.mask = np.concatenate([left_pad_mask(self.mask, width), left_pad_mask(mask, width)])
        self.positions = np.concatenate([self.positions, mask.sum(axis=1)])
        if encoder:
            self.encoder = merge_encoder(self.encoder, encoder)

    def step_inputs(self) -> dict[str, np.ndarray]:
        """attention_mask int64 (N, P+1) and position_ids int64 (N, 1) for one new token per row
        (and the encoder values of an encoder-decoder batch)."""
        mask = np.concatenate([self.mask, np.ones((self.rows, 1), dtype=np.int64)], axis=1)
        return {"attention_mask": mask, "position_ids": self.positions[:, None].copy(), **self.encoder}

    def advanced(self) -> None:
        """Record the step just run: one more real slot (the cache already grew) and position."""
        self.mask = np.concatenate([self.mask, np.ones((self.rows, 1), dtype=np.int64)], axis=1)
        self.positions = self.positions + 1
        assert self.mask.shape[1] == self.cache.length, "mask and cache disagree on the past length"

    def keep(self, rows: np.ndarray) -> None:
        """Keep rows `rows` (int64 (M,), in that order); then drop leading slots that are padding
        in every remaining row, so the past shrinks back when long rows leave."""
        if len(rows) == self.rows:
            return
        self.cache.take(rows)
        self.mask, self.positions = self.mask[rows], self.positions[rows]
        self.encoder = keep_encoder(self.encoder, rows)
        used = np.flatnonzero(self.mask.any(axis=0))
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first:
            self.mask = self.mask[:, first:]
            self.cache.keys = [k[:, :, first:] for k in self.cache.keys]  # (M, H, P - first, D)
            self.cache.values = [v[:, :, first:] for v in self.cache.values]
