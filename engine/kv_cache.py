"""The self-attention cache as engine state: per layer key and value of (B, H_kv, P, D).

Two allocations, as the manifest's `kv.allocation` says:
- growing: the decoder returns past + new (P+T slots) and the cache holds what it returned;
- preallocated: buffers of C slots (the request's whole length) are made once, the decoder
  writes the new tokens' K/V at `cache_position` and returns the same buffers. A runtime that
  can write outputs in place (`Runtime.run(..., into=)`) then moves only T slots per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from seqport.engine.placement import HOST, Placement


@lru_cache(maxsize=16)
def layer_names(prefix: str, num_layers: int) -> tuple[str, ...]:
    """("{prefix}_key.0", ..., "{prefix}_value.{L-1}"): keys then values, formatted once per
    layer count instead of on every decode step."""
    return tuple(f"{prefix}_{kind}.{i}" for kind in ("key", "value") for i in range(num_layers))


class KVCache:
    """Past keys/values of every decoder layer and the current past length.

    `take(rows)` serves both beam reordering (rows = source beam of each new hypothesis) and
    dropping finished rows (rows = the rows still active). The values live where the
    placement keeps them (numpy on the host, DeviceArrays on a device); the placement also
    does the row gather (whisper's rearrange_kv_cache) and uploads cache_position.

    Args:
        keys, values: one array per layer, (B, H_kv, P, D), or (B, H_kv, C, D) buffers.
        placement: where the values live (default: the host).
        filled: for preallocated buffers, how many slots hold tokens; None for a growing cache.
    """

    def __init__(
        self,
        keys: list[np.ndarray],
        values: list[np.ndarray],
        placement: Placement = HOST,
        filled: int | None = None,
    ) -> None:
        self.keys, self.values = keys, values
        self._placement = placement
        self._filled = filled

    @classmethod
    def empty(
        cls,
        batch: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: str = "float32",
        placement: Placement = HOST,
    ) -> KVCache:
        zero = np.zeros((batch, num_kv_heads, 0, head_dim), dtype=dtype)  # (B, H, 0, D)
        zero = placement.upload(zero, "empty cache")
        return cls([zero] * num_layers, [zero] * num_layers, placement)

    @classmethod
    def preallocated(
        cls,
        batch: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: str = "float32",
        placement: Placement = HOST,
    ) -> KVCache:
        """Zero-filled buffers (B, H_kv, capacity, D), one per layer and K/V, made by the
        placement (on a device nothing crosses the bus; zeros: a masked slot holding NaN would
        still poison the attention)."""
        shape = (batch, num_kv_heads, capacity, head_dim)
        keys = [placement.zeros(shape, dtype) for _ in range(num_layers)]
        values = [placement.zeros(shape, dtype) for _ in range(num_layers)]
        return cls(keys, values, placement, filled=0)

    @property
    def is_preallocated(self) -> bool:
        return self._filled is not None

    @property
    def length(self) -> int:
        """Slots holding tokens: the past length P."""
        return self._filled if self._filled is not None else int(self.keys[0].shape[2])

    @property
    def capacity(self) -> int:
        """Slots the buffers hold (= length for a growing cache)."""
        return int(self.keys[0].shape[2])

    @property
    def batch(self) -> int:
        return int(self.keys[0].shape[0])

    def feeds(self, new: int = 1) -> dict[str, np.ndarray]:
        """Logical decoder inputs past_key.{i} / past_value.{i} for a step of `new` tokens, and
        cache_position (T,) for preallocated buffers.

        Raises:
            ValueError: the step would write past the buffers' end (an engine bug, not user input).
        """
        out = dict(zip(layer_names("past", len(self.keys)), self.keys + self.values))
        if self._filled is not None:
            if self._filled + new > self.capacity:
                raise ValueError(f"KV buffers of {self.capacity} slots cannot take {new} more after {self._filled}")
            slots = np.arange(self._filled, self._filled + new, dtype=np.int64)  # (T,)
            out["cache_position"] = self._placement.upload(slots, "cache_position")
        return out

    def outputs_into(self) -> dict[str, np.ndarray]:
        """Outputs a runtime may write in place: each present buffer is the past one."""
        if self._filled is None:
            return {}
        return dict(zip(layer_names("present", len(self.keys)), self.keys + self.values))

    def update(self, outputs: dict[str, np.ndarray], new: int = 1) -> None:
        """Hold a step's present_key.{i} / present_value.{i}: (B, H, P+T, D) growing, or the
        buffers with `new` more slots filled."""
        layers = len(self.keys)
        names = layer_names("present", layers)
        self.keys = [outputs[name] for name in names[:layers]]
        self.values = [outputs[name] for name in names[layers:]]
        if self._filled is not None:
            self._filled += new

    def advance(self, new: int = 1) -> None:
        """Count `new` more filled slots of preallocated buffers that a runtime wrote in place
        (what `update` does, for a caller that knows the buffers are the same: engine/causal_lane.py)."""
        assert self._filled is not None, "only preallocated buffers are written in place"
        self._filled += new

    def hold(self, keys: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> None:
        """Hold a growing cache's next arrays, one per layer (B, H, P+T, D): what `update` does
        from the decoder's logical outputs, for a caller that has them by layer already. Keys and
        values must be the same kind of sequence (`feeds` and `take` concatenate them):
        engine/host_lane.py sets both attributes itself, as tuples, which saves this call."""
        self.keys, self.values = keys, values

    def take(self, rows: np.ndarray) -> None:
        """Keep/reorder batch rows: new row r is old row rows[r]."""
        taken = self._placement.take(self.keys + self.values, rows)  # one call for every layer
        self.keys, self.values = taken[: len(self.keys)], taken[len(self.keys) :]

    def release(self) -> None:
        """Drop every buffer (on a device this frees its memory); the cache is unusable after."""
        self.keys, self.values = [], []
