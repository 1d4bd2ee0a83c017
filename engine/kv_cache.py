"""The self-attention cache as engine state: per layer key and value of (B, H_kv, P, D)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Take = Callable[[np.ndarray, np.ndarray], np.ndarray]


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.take(array, rows, axis=0)


class KVCache:
    """Past keys/values of every decoder layer and the current past length.

    `take(rows)` serves both beam reordering (rows = source beam of each new hypothesis) and
    dropping finished rows (rows = the rows still active). The row-gather is a function so a
    runtime that keeps values on a device can supply its own (see whisper's
    rearrange_kv_cache for the same idea).
    """

    def __init__(self, keys: list[np.ndarray], values: list[np.ndarray], take: Take = take_rows) -> None:
        self.keys, self.values = keys, values
        self._take = take

    @classmethod
    def empty(
        cls, batch: int, num_layers: int, num_kv_heads: int, head_dim: int, dtype: str = "float32"
    ) -> KVCache:
        zero = np.zeros((batch, num_kv_heads, 0, head_dim), dtype=dtype)  # (B, H, 0, D)
        return cls([zero] * num_layers, [zero] * num_layers)

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def batch(self) -> int:
        return int(self.keys[0].shape[0])

    def feeds(self) -> dict[str, np.ndarray]:
        """Logical decoder inputs past_key.{i} / past_value.{i}."""
        out = {f"past_key.{i}": k for i, k in enumerate(self.keys)}
        out.update({f"past_value.{i}": v for i, v in enumerate(self.values)})
        return out

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        """Replace the cache with a step's present_key.{i} / present_value.{i} (B, H, P+T, D)."""
        self.keys = [outputs[f"present_key.{i}"] for i in range(len(self.keys))]
        self.values = [outputs[f"present_value.{i}"] for i in range(len(self.values))]

    def take(self, rows: np.ndarray) -> None:
        """Keep/reorder batch rows: new row r is old row rows[r]."""
        self.keys = [self._take(k, rows) for k in self.keys]
        self.values = [self._take(v, rows) for v in self.values]
