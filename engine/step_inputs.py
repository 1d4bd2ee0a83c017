"""position_ids and the self-attention attention_mask of rows that all decode in lockstep,
sliced from buffers made once per request (issue #16: no numpy allocation per decode step).

An encoder-decoder request's rows all sit at the same step (continuous batching, which mixes
steps, builds its own in engine/running_batch.py), so every row's positions are P..P+T-1 and
no self-attention slot is masked. Both arrays are views of two buffers:

- the mask: a flat run of ones, any prefix of which reshapes to (N, P+T) as a C-contiguous
  view (every element is 1, so which ones form which row does not matter);
- the positions: a (C, N0) table whose row p holds p in every column; (N, 1) for one new token
  is the transposed slice [P, :N], also C-contiguous (a size-1 axis has no stride to respect).
"""

from __future__ import annotations

import numpy as np


class LockstepInputs:
    """Per-request position_ids and attention_mask for rows at the same decode step.

    Args:
        rows: the most rows the request runs at once (N0: inputs × beams or samples).
        capacity: the most positions a step reaches, P+T (first tokens + max_new_tokens); a
            larger request grows the buffers once.
    """

    def __init__(self, rows: int, capacity: int) -> None:
        self._build(rows, capacity)

    def _build(self, rows: int, capacity: int) -> None:
        self._rows, self._capacity = rows, capacity
        self._ones = np.ones(rows * capacity, dtype=np.int64)  # (N0·C,) flat
        self._table = np.repeat(np.arange(capacity, dtype=np.int64)[:, None], rows, axis=1)  # (C, N0)
        self._ones.flags.writeable = self._table.flags.writeable = False  # shared by every view handed out
        self._views: dict[tuple[int, int, int], np.ndarray] = {}  # (kind, rows, size) → view, made once
        # (rows, past) → next_step's pair; cleared in place, never replaced: callers may hold it
        self.next_views: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = getattr(self, "next_views", {})
        self.next_views.clear()

    def mask(self, rows: int, length: int) -> np.ndarray:
        """int64 (rows, length) of ones: a read-only view, made once per shape."""
        view = self._views.get((0, rows, length))
        if view is None:
            self._fit(rows, length)
            view = self._keep((0, rows, length), self._ones[: rows * length].reshape(rows, length))  # (N, P+T)
        return view

    def positions(self, rows: int, past: int, new: int) -> np.ndarray:
        """int64 (rows, new): past + arange(new) in every row (a read-only view, made once per
        shape, for one new token)."""
        if new != 1:  # the prefill only: a copy
            self._fit(rows, past + new)
            return np.ascontiguousarray(self._table[past : past + new, :rows].T)  # (N, T)
        view = self._views.get((1, rows, past))
        if view is None:
            self._fit(rows, past + 1)
            view = self._keep((1, rows, past), self._table[past : past + 1, :rows].T)  # (N, 1), C-contiguous
        return view

    def next_step(self, rows: int, past: int) -> tuple[np.ndarray, np.ndarray]:
        """position_ids int64 (rows, 1) and the all-ones attention_mask int64 (rows, past + 1) of
        one new token: `positions(rows, past, 1)` and `mask(rows, past + 1)`, kept in
        `next_views` under (rows, past), where the host lane looks them up without a call."""
        pair = self.next_views.get((rows, past))
        if pair is None:
            pair = (self.positions(rows, past, 1), self.mask(rows, past + 1))
            if len(self.next_views) >= 8192:  # as _keep: bounded
                self.next_views.clear()
            self.next_views[(rows, past)] = pair
        return pair

    def _keep(self, key: tuple[int, int, int], view: np.ndarray) -> np.ndarray:
        if len(self._views) >= 8192:  # many row counts × lengths: start over rather than grow without bound
            self._views = {}
        self._views[key] = view
        return view

    def _fit(self, rows: int, length: int) -> None:
        if rows > self._rows or length > self._capacity:  # a caller past the planned size: grow once
            self._build(max(rows, self._rows), max(length, 2 * self._capacity))
