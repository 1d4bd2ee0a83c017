"""Where a model runs: the one object the model kinds use to move and run values.

The model kinds (seq2seq.py, causal_lm.py) write one step each against `Placement`; `load()`
picks the placement (`open_placement` below asks the backend):

- `HostPlacement` (this module): numpy arrays on the host, components run through
  `Runtime.run` (with `into=` for preallocated KV buffers written in place); uploads and
  fetches are the identity, so the host loop pays nothing for the abstraction;
- `seqport.runtimes.ort_device.OrtDevice`: onnxruntime IOBinding, every value an OrtValue on
  the provider's device; only token ids and a few candidates per row cross the bus.

The shape follows openai/whisper's `Inference` (logits, rearrange_kv_cache, cleanup_caching).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.device_array import Candidates
from seqport.engine.errors import ProviderError
from seqport.engine.runtime import Runtime, RuntimeOptions

#: a value as a placement holds it: np.ndarray on the host, DeviceArray on a device.
Value = Any


@dataclass(frozen=True)
class Selection:
    """How a device selects tokens: mode "greedy", "sample" or "beam", with k candidates per row
    (engine/device_search.py plans it)."""

    mode: str
    k: int


class Placement(Protocol):
    """Where values live and components run (see the module docstring)."""

    def upload(self, array: np.ndarray, label: str = "") -> Value:
        """A host array as a value of this placement (`label` names the copy in transfer logs)."""
        ...

    def fetch(self, value: Value, label: str = "") -> np.ndarray:
        """A value of this placement as a host array."""
        ...

    def run(
        self, component: str, runtime: Runtime, feeds: dict[str, Value], into: dict[str, Value] | None = None
    ) -> dict[str, Value]:
        """Run a component: graph-named feeds → graph-named outputs. Outputs named in `into` may
        be written in place into those values (preallocated KV buffers)."""
        ...

    def take(self, values: list[Value], rows: np.ndarray) -> list[Value]:
        """Rows `rows` (int64 (M,)) of every value along axis 0 (beam reorder, rows leaving)."""
        ...

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Value:
        """A zero-filled value (preallocated KV buffers)."""
        ...

    def plan(self, config: GenerationConfig, eos: tuple[int, ...], vocab_size: int) -> Selection | None:
        """How the placement selects tokens for `config`, or None: the search gets full logits."""
        ...

    def logits(self, logits: Value, selection: Selection | None) -> np.ndarray | Candidates:
        """The decoder's logits (N, T, V) as the search needs them: the last position's float
        (N, V) logits, or `Candidates` chosen as `selection` says."""
        ...


class HostPlacement:
    """numpy on the host: uploads and fetches are the identity, runs go to `Runtime.run`."""

    def upload(self, array: np.ndarray, label: str = "") -> np.ndarray:
        return array

    def fetch(self, value: np.ndarray, label: str = "") -> np.ndarray:
        return value

    def run(
        self,
        component: str,
        runtime: Runtime,
        feeds: dict[str, np.ndarray],
        into: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        return runtime.run(feeds, into=into) if into else runtime.run(feeds)

    def take(self, values: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
        return [np.take(value, rows, axis=0) for value in values]

    def zeros(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.zeros(shape, dtype)

    def plan(self, config: GenerationConfig, eos: tuple[int, ...], vocab_size: int) -> None:
        return None  # the host search reads full logits; nothing to save by selecting early

    def logits(self, logits: np.ndarray, selection: Selection | None) -> np.ndarray:
        return logits[:, -1, :]  # (N, V)


#: the host placement (stateless: one instance serves every model).
HOST = HostPlacement()


#: backend → module in seqport.runtimes whose `open_placement(runtimes, options)` decides
#: where that backend's models run (a backend without one runs on the host).
PLACEMENTS = {"onnxruntime": "seqport.runtimes.ort_device"}


def open_placement(runtimes: dict[str, Runtime], options: RuntimeOptions) -> Placement:
    """Where a generating model's loaded components run; the backend decides (the device
    loop is on for onnxruntime's cuda and tensorrt providers unless options.device_loop says).

    Raises:
        ProviderError: options.device_loop is True but the backend has no device loop.
    """
    module_name = PLACEMENTS.get(options.backend)
    if module_name is None:
        if options.device_loop:
            raise ProviderError(
                f"the device loop needs the onnxruntime backend, got backend={options.backend!r}; "
                "pass RuntimeOptions(device_loop=False) or backend='onnxruntime'"
            )
        return HOST
    return importlib.import_module(module_name).open_placement(runtimes, options)
