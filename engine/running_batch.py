"""The rows of a continuously batched decoder: one growing KV cache, its mask, the encoder's values.

Rows join (a prefilled request's cache rows, merged in) and leave (finished or cancelled)
between two decoder steps, so they hold different numbers of real tokens. Every row's tokens
end at the last column (left padding): a row with fewer tokens than the cache's past length P
has leading zero slots whose mask is 0, and each row numbers its positions from its own first
real token, so a row computes what it would alone (Orca, Yu et al. OSDI 2022: iteration-level
scheduling). An encoder-decoder batch also holds each row's cross K/V and encoder mask, the
source axis right-padded to the longest source. Host numpy only; a preallocated cache is not
merged (its artifact micro-batches).

A row that leaves can also be *vacated* instead of removed: its slot stays in the arrays, fully
masked and at position 0 (a step computes it and nobody reads it), until a new row is *placed*
into it in place. That spares the running rows the two copies of the whole cache that a removal
(take) and an append (a new allocation) each make.
"""

from __future__ import annotations

import numpy as np

from seqport.engine.kv_cache import KVCache


def stack_rows(arrays: list[np.ndarray], axis: int, width: int, at_end: bool) -> np.ndarray:
    """The rows of `arrays` one after the other in one zero-filled array whose `axis` is `width`
    long; each array's values sit at the end of that axis (`at_end`: left padding) or at its
    start (right padding). One allocation and one copy per array (np.pad + concatenate made two).

    Args:
        arrays: same shape except axis 0 and `axis` (each at most `width` long there).
    """
    shape = list(arrays[0].shape)
    shape[0], shape[axis] = sum(a.shape[0] for a in arrays), width
    out = np.zeros(shape, dtype=arrays[0].dtype)
    row = 0
    for array in arrays:
        length = array.shape[axis]
        index: list[slice] = [slice(row, row + array.shape[0])] + [slice(None)] * (array.ndim - 1)
        index[axis] = slice(width - length, width) if at_end else slice(0, length)
        out[tuple(index)] = array
        row += array.shape[0]
    return out


def merge_encoder(held: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of `new` after those of `held` (same names: encoder_attention_mask int64 (B, S),
    cross_key.{i}/cross_value.{i} (B, H, S, D)); the shorter source is right-padded with zeros,
    which the encoder mask hides."""
    if not held:
        return dict(new)
    width = max(held["encoder_attention_mask"].shape[1], new["encoder_attention_mask"].shape[1])
    return {name: stack_rows([held[name], new[name]], 1 if held[name].ndim == 2 else 2, width, at_end=False)
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
        self.free = np.zeros(0, dtype=bool)  # (N,): vacated slots, masked, waiting for a new row
        self._stepped: np.ndarray | None = None  # (N, P+1) the mask step_inputs gave the step being run

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
        self._stepped = None
        width = max(self.mask.shape[1], mask.shape[1])
        keys = [stack_rows([a, b], 2, width, at_end=True) for a, b in zip(self.cache.keys, cache.keys)]
        values = [stack_rows([a, b], 2, width, at_end=True) for a, b in zip(self.cache.values, cache.values)]
        self.cache = KVCache(keys, values)  # (N + M, H, width, D)
        self.mask = stack_rows([self.mask, mask], 1, width, at_end=True)  # (N + M, width)
        self.positions = np.concatenate([self.positions, mask.sum(axis=1)])
        self.free = np.concatenate([self.free, np.zeros(len(mask), dtype=bool)])
        if encoder:
            self.encoder = merge_encoder(self.encoder, encoder)

    def vacate(self, rows: np.ndarray) -> None:
        """Free the slots `rows` (int64 (M,)) without moving any other row: their mask is zeroed
        and their position held at 0 from now on, then leading columns padded in every row are
        trimmed (views, no copy)."""
        if not len(rows):
            return
        self._stepped = None
        self.free[rows] = True
        self.mask[rows] = 0
        self.positions[rows] = 0
        self._trim()

    def place(
        self, slots: np.ndarray, cache: KVCache, mask: np.ndarray, encoder: dict[str, np.ndarray] | None = None
    ) -> bool:
        """Write rows prefilled on their own into the free slots `slots` (int64 (M,)), in place:
        `cache` (M, H, L, D) growing, `mask` int64 (M, L), `encoder` as for admit.

        Returns:
            False, with nothing changed, when they do not fit without growing the arrays (L longer
            than the running past, or a source longer than the held ones): admit them instead.
        """
        past, length = self.mask.shape[1], mask.shape[1]
        width = self.encoder["encoder_attention_mask"].shape[1] if self.encoder else 0
        if cache.is_preallocated or length > past or (encoder and encoder["encoder_attention_mask"].shape[1] > width):
            return False
        assert self.free[slots].all(), "place() writes only into vacated slots"
        self._stepped = None
        for held, new in zip(self.cache.keys + self.cache.values, cache.keys + cache.values):
            held[slots, :, past - length :] = new  # (M, H, L, D) at the end of the past axis
        self.mask[slots] = 0
        self.mask[slots, past - length :] = mask
        self.positions[slots] = mask.sum(axis=1)
        for name, value in (encoder or {}).items():
            held = self.encoder[name]
            held[slots] = 0
            if value.ndim == 2:
                held[slots, : value.shape[1]] = value  # (M, S) encoder mask
            else:
                held[slots, :, : value.shape[2]] = value  # (M, H, S, D) cross K/V
        self.free[slots] = False
        return True

    def step_inputs(self) -> dict[str, np.ndarray]:
        """attention_mask int64 (N, P+1) and position_ids int64 (N, 1) for one new token per row
        (and the encoder values of an encoder-decoder batch)."""
        self._stepped = self._grown_mask()
        return {"attention_mask": self._stepped, "position_ids": self.positions[:, None].copy(), **self.encoder}

    def advanced(self) -> None:
        """Record the step just run (after step_inputs): one more real slot (the cache already
        grew) and position."""
        stepped, self._stepped = self._stepped, None
        self.mask = stepped if stepped is not None else self._grown_mask()  # (N, P+1)
        self.positions = self.positions + 1
        if self.free.any():  # a vacated slot's step wrote nothing that counts
            self.mask[self.free, -1] = 0
            self.positions[self.free] = 0
        assert self.mask.shape[1] == self.cache.length, "mask and cache disagree on the past length"

    def _grown_mask(self) -> np.ndarray:
        return np.concatenate([self.mask, np.ones((self.rows, 1), dtype=np.int64)], axis=1)  # (N, P+1)

    def keep(self, rows: np.ndarray) -> None:
        """Keep rows `rows` (int64 (M,), in that order); then drop leading slots that are padding
        in every remaining row, so the past shrinks back when long rows leave."""
        if len(rows) == self.rows:
            return
        self._stepped = None
        self.cache.take(rows)
        self.mask, self.positions, self.free = self.mask[rows], self.positions[rows], self.free[rows]
        self.encoder = keep_encoder(self.encoder, rows)
        self._trim()

    def _trim(self) -> None:
        used = np.flatnonzero(self.mask.any(axis=0))
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first:
            self.mask = self.mask[:, first:]
            self.cache.keys = [k[:, :, first:] for k in self.cache.keys]  # (M, H, P - first, D)
            self.cache.values = [v[:, :, first:] for v in self.cache.values]
