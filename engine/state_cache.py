"""Declared decoder state as engine state: any tensors a step reads back (manifest `states`).

A manifest whose `states` section is empty runs on KVCache (engine/kv_cache.py). One that
declares states (an own model's recurrent cell, docs/own-model.md) runs on StateCache: per
state and layer one array whose shape follows the declared rule — "batch" rows on axis 0, an
optional "steps" axis that grows by T each step, fixed sizes otherwise — starting from the
declared initial value. It offers the KVCache members the decode loop and the steps use.
"""

from __future__ import annotations

import numpy as np

from seqport.engine.placement import HOST, Placement, Value


class StateCache:
    """Every declared state of every decoder layer and the number of tokens stepped so far.

    Args:
        arrays: logical past name ("past_cell.0", ...) → its array, batch on axis 0.
        placement: where the arrays live (default: the host).
    """

    is_preallocated = False

    def __init__(self, arrays: dict[str, Value], placement: Placement = HOST) -> None:
        self._arrays, self._placement, self._length = arrays, placement, 0

    @classmethod
    def initial(cls, rows: int, states: dict, num_layers: int, placement: Placement = HOST) -> StateCache:
        """The declared initial state (StateSpec.initial "zeros") for `rows` rows.

        Args:
            rows: batch rows B.
            states: manifest `states`, name → StateSpec (shape rule, dtype).
            num_layers: layers each state has.
        """
        arrays = {}
        for name, state in states.items():
            sizes = {"batch": rows, "steps": 0}
            shape = tuple(sizes.get(d, d) for d in state.shape)  # e.g. (B, d) or (B, H, 0, D)
            for i in range(num_layers):  # one buffer per layer: each is replaced by its own output
                arrays[f"past_{name}.{i}"] = placement.upload(np.zeros(shape, state.dtype), "initial state")
        return cls(arrays, placement)

    @property
    def length(self) -> int:
        """Tokens stepped so far: the past length P."""
        return self._length

    @property
    def capacity(self) -> int:
        return self._length

    @property
    def batch(self) -> int:
        return int(next(iter(self._arrays.values())).shape[0])

    def feeds(self, new: int = 1) -> dict[str, Value]:
        """Logical decoder inputs past_{name}.{i}."""
        return dict(self._arrays)

    def outputs_into(self) -> dict[str, Value]:
        return {}

    def update(self, outputs: dict[str, Value], new: int = 1) -> None:
        """Hold a step's present_{name}.{i} as the next step's past, `new` tokens later."""
        self._arrays = {name: outputs["present_" + name[len("past_") :]] for name in self._arrays}
        self._length += new

    def take(self, rows: np.ndarray) -> None:
        """Keep/reorder batch rows (beams, finished rows): new row r is old row rows[r]."""
        names = list(self._arrays)
        self._arrays = dict(zip(names, self._placement.take([self._arrays[n] for n in names], rows)))

    def release(self) -> None:
        """Drop every buffer; the cache is unusable after."""
        self._arrays = {}
