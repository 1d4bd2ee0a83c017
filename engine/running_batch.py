"""The rows of a continuously batched decoder-only batch: one growing KV cache and its mask.

Rows join (a prefilled request's cache rows, merged in) and leave (finished or cancelled)
between two decoder steps, so they hold different numbers of real tokens. Every row's tokens
end at the last column (left padding): a row with fewer tokens than the cache's past length P
has leading zero slots whose mask is 0, and each row numbers its positions from its own first
real token, so a row computes what it would alone (Orca, Yu et al. OSDI 2022: iteration-level
scheduling). Host numpy only; a preallocated cache is not merged (its artifact micro-batches).
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

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def admit(self, cache: KVCache, mask: np.ndarray) -> None:
        """Append rows prefilled on their own: `cache` (M, H, L, D) growing, `mask` int64 (M, L).

        The shorter of the running past P and L is left-padded to max(P, L) with masked zeros.

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

    def step_inputs(self) -> dict[str, np.ndarray]:
        """attention_mask int64 (N, P+1) and position_ids int64 (N, 1) for one new token per row."""
        mask = np.concatenate([self.mask, np.ones((self.rows, 1), dtype=np.int64)], axis=1)
        return {"attention_mask": mask, "position_ids": self.positions[:, None].copy()}

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
        used = np.flatnonzero(self.mask.any(axis=0))
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first:
            self.mask = self.mask[:, first:]
            self.cache.keys = [k[:, :, first:] for k in self.cache.keys]  # (M, H, P - first, D)
            self.cache.values = [v[:, :, first:] for v in self.cache.values]
