"""Check feeds against a component's contract before the runtime sees them.

An onnxruntime error must never be the first error a user sees: names, dtypes, ranks and the
agreement of shared dimensions (every "batch_size" axis equal, ...) are checked here, with
every problem listed at once.
"""

from __future__ import annotations

import numpy as np

from seqport.engine.device_array import DeviceArray
from seqport.engine.errors import InputError
from seqport.engine.manifest import Component, expand_layers


class TrustedNames:
    """The feed names a decoder call need not check again: a caller's trusted names plus the
    cache's own feeds, one frozenset per distinct pair, so a step does not build it anew."""

    def __init__(self) -> None:
        self._sets: dict[tuple[frozenset[str], tuple[str, ...]], frozenset[str]] = {}

    def of(self, trusted: frozenset[str], own: dict) -> frozenset[str]:
        key = (trusted, tuple(own))
        names = self._sets.get(key)
        if names is None:
            if len(self._sets) > 64:  # callers passing ever new trusted sets: keep it bounded
                self._sets.clear()
            names = self._sets[key] = trusted | frozenset(own)
        return names


class Signature:
    """A component's inputs and outputs with "{i}" expanded, keyed by logical name.

    Args:
        component: the manifest entry.
        num_layers: how many layers "{i}" expands to.
        fixed: sizes of named dims the manifest fixes, e.g. {"head_dim": 64}.
    """

    def __init__(self, component: Component, num_layers: int, fixed: dict[str, int]) -> None:
        self.inputs = expand_layers(component.inputs, num_layers)
        self.outputs = expand_layers(component.outputs, num_layers)
        self._fixed = fixed
        self._graph_to_logical = {spec.name: logical for logical, spec in self.outputs.items()}
        # per input, resolved once (this runs every decode step): dtype, and per axis its
        # name and the size the manifest fixes (None: a symbol the feeds must agree on)
        self._plans = {
            logical: (np.dtype(spec.dtype), [(d, d if isinstance(d, int) else fixed.get(d)) for d in spec.shape])
            for logical, spec in self.inputs.items()
        }
        self._names = tuple((logical, spec.name) for logical, spec in self.inputs.items())
        self._unchecked: dict[frozenset[str], tuple[str, ...]] = {}  # trusted set → inputs still to check

    def feeds(self, values: dict[str, np.ndarray], trusted: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        """Map logical → graph names after checking every value.

        Args:
            values: logical name → array.
            trusted: names whose values the engine made from this component's own outputs (the
                KV cache), mapped without the per-step check; every other value is checked.

        Raises:
            InputError: a missing or unknown input, a wrong dtype or rank, disagreeing dims.
        """
        try:  # the usual call: every input given, no unknown one; only untrusted values checked
            feeds = {name: values[logical] for logical, name in self._names}
        except KeyError:
            feeds = None
        if feeds is None or len(feeds) != len(values):
            return self._feeds_listing_problems(values, trusted)
        sizes: dict[str, tuple[int, str]] = {}
        problems = []
        for logical in self._to_check(trusted):
            value = values[logical]
            problems += [f"missing input {logical!r}"] if value is None else self._check(logical, value, sizes)
        if problems:
            raise InputError("invalid feeds: " + "; ".join(problems))
        return feeds

    def _to_check(self, trusted: frozenset[str]) -> tuple[str, ...]:
        unchecked = self._unchecked.get(trusted)
        if unchecked is None:  # a handful of distinct trusted sets per model: kept
            unchecked = self._unchecked[trusted] = tuple(k for k in self.inputs if k not in trusted)
        return unchecked

    def _feeds_listing_problems(self, values: dict[str, np.ndarray], trusted: frozenset[str]) -> dict[str, np.ndarray]:
        problems = [f"unknown input {k!r}" for k in values if k not in self.inputs]
        sizes: dict[str, tuple[int, str]] = {}
        feeds = {}
        for logical, spec in self.inputs.items():
            value = values.get(logical)
            if value is None:
                problems.append(f"missing input {logical!r}")
                continue
            if logical not in trusted:
                problems.extend(self._check(logical, value, sizes))
            feeds[spec.name] = value
        if problems:
            raise InputError("invalid feeds: " + "; ".join(problems))
        return feeds

    def by_logical(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self._graph_to_logical[name]: value for name, value in outputs.items()}

    def _check(self, logical: str, value, sizes: dict[str, tuple[int, str]]) -> list[str]:
        spec = self.inputs[logical]
        if not isinstance(value, (np.ndarray, DeviceArray)):
            return [f"{logical}: expected a numpy array, got {type(value).__name__}"]
        dtype, axes = self._plans[logical]
        if value.dtype != dtype:
            return [f"{logical}: expected dtype {spec.dtype}, got {value.dtype}"]
        if value.ndim != len(axes):
            return [f"{logical}: expected rank {len(spec.shape)} {spec.shape}, got {value.shape}"]
        problems = []
        for axis, ((dim, expected), size) in enumerate(zip(axes, value.shape)):
            if expected is not None:
                if size != expected:
                    problems.append(f"{logical}: axis {axis} ({dim}) must be {expected}, got {size}")
                continue
            seen = sizes.setdefault(dim, (size, logical))
            if seen[0] != size:
                problems.append(f"{logical}: axis {axis} ({dim}) is {size} but {seen[1]} has {seen[0]}")
        return problems
