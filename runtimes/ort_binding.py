"""An onnxruntime IOBinding that keeps in-place buffers bound from one run to the next.

A preallocated decoder feeds the same KV buffers every step and writes its present K/V back
into them (past and present are one array per layer and K/V). Binding those 2·L arrays anew
each step (an OrtValue per array, a bind call per input and output) cost about 1.4 ms per
SmolLM2 step on the CPU (issue #16), a quarter of an int4 step. `InPlaceBinding` binds them
once and, per run, rebinds only the small inputs that are new arrays and the outputs
onnxruntime allocates. A small input passed as the *same array object* as at the run before
(a caller that writes its ids, mask and positions in place: engine/causal_lane.py) stays bound
too, so a step whose every feed and output is such a buffer makes no bind call at all.

The binding holds the buffers only by weak reference: once the engine drops its cache (the
request ended), the arrays are freed as before and the next request's buffers are bound anew.
"""

from __future__ import annotations

import operator
import weakref

import numpy as np
import onnxruntime as ort

#: where onnxruntime allocates the outputs not written in place.
_CPU = ort.OrtDevice.make("cpu", 0)._get_c_device()


_call = operator.methodcaller("__call__")  # a weak reference → its array (or None once freed)


def _native(binding: ort.IOBinding):
    """The pybind binding under onnxruntime's IOBinding wrapper. The wrapper keeps every bound
    OrtValue (and so every bound array) alive until it is dropped; the native one holds the
    arrays' memory without owning it, which the weak references below rely on."""
    return binding._iobinding


def _wrap(array: np.ndarray):
    """A native OrtValue over `array`'s memory (no copy; it does not keep `array` alive)."""
    return ort.OrtValue.ortvalue_from_numpy(array)._ortvalue


class InPlaceBinding:
    """Runs one session with `into` outputs bound in place, reusing the binding while the
    in-place arrays (and the inputs that are the same arrays) stay the same objects.

    Args:
        session: the onnxruntime session.
        outputs: the session's output names, in its order.
    """

    def __init__(self, session: ort.InferenceSession, outputs: list[str]) -> None:
        self._session, self._outputs = session, outputs
        self._binding: ort.IOBinding | None = None  # the wrapper: run_with_iobinding takes it
        self._into_refs: tuple[tuple[str, weakref.ref], ...] = ()
        self._shared_refs: tuple[tuple[str, weakref.ref], ...] = ()
        self._feed_names: frozenset[str] = frozenset()  # the feeds' names at the last binding
        self._others: tuple[str, ...] = ()  # those not bound in place, in the feeds' order
        self._allocated: tuple[str, ...] = ()
        self._checks: tuple[tuple, tuple, tuple, tuple] = ((), (), (), ())  # _still_bound's names and refs
        self._bound: dict[str, weakref.ref] = {}  # other inputs: the array each is bound to now

    def run(self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs named in `into` are written into those arrays and returned as them.

        Args:
            feeds: graph input name → array (C-contiguous arrays are bound without a copy).
            into: graph output name → array the output is written into; feeds that are the
                same objects (past = present buffers) stay bound between runs.

        Returns:
            Every output by name: the `into` arrays, and the others as new numpy arrays.
        """
        if not self._still_bound(feeds, into) or feeds.keys() != self._feed_names:
            self._bind_in_place(feeds, into)
        binding, bound = _native(self._binding), self._bound
        keep = []  # arrays bound for this run: alive until it ends (the caller may keep them longer)
        for name in self._others:  # the feeds that are not in-place buffers
            value = feeds[name]
            ref = bound.get(name)
            if ref is not None and ref() is value:  # the same live array: its memory is still bound
                continue
            keep.append(np.ascontiguousarray(value))
            binding.bind_ortvalue_input(name, _wrap(keep[-1]))
            bound[name] = weakref.ref(keep[-1])  # dead once a temporary goes: then bound anew
        for name in self._allocated:  # allocated anew each run: callers may keep what they get
            binding.bind_output(name, _CPU)
        self._session.run_with_iobinding(self._binding)
        if not self._allocated:  # every output written in place: nothing to read back
            return dict(into)
        values = binding.get_outputs()  # only the allocated ones are read back
        return {name: into[name] if name in into else values[i].numpy() for i, name in enumerate(self._outputs)}

    def _still_bound(self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray]) -> bool:
        if self._binding is None or len(into) != len(self._into_refs):
            return False
        # C-level loops (map), no generator frame per buffer: this runs every step over 2·L + 2·L
        into_names, into_refs, shared_names, shared_refs = self._checks
        return all(map(operator.is_, map(into.get, into_names), map(_call, into_refs))) and all(
            map(operator.is_, map(feeds.get, shared_names), map(_call, shared_refs))
        )

    def _bind_in_place(self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray]) -> None:
        """A fresh binding with every `into` array bound as an output and, where a feed is the
        same array, as that input too. Only weak references are kept (see the module doc)."""
        wrapper = self._session.io_binding()
        binding = _native(wrapper)
        into_ids = {id(array) for array in into.values()}
        shared = {name: value for name, value in feeds.items() if id(value) in into_ids}
        for name in self._outputs:  # in the session's order: get_outputs() keeps binding order
            if name in into:
                _check_in_place(name, into[name])
                binding.bind_ortvalue_output(name, _wrap(into[name]))
            else:
                binding.bind_output(name, _CPU)
        for name, array in shared.items():
            binding.bind_ortvalue_input(name, _wrap(array))
        self._binding = wrapper
        self._allocated = tuple(name for name in self._outputs if name not in into)
        self._into_refs = tuple((name, weakref.ref(array)) for name, array in into.items())
        self._shared_refs = tuple((name, weakref.ref(array)) for name, array in shared.items())
        self._feed_names = frozenset(feeds)
        self._others = tuple(name for name in feeds if name not in shared)
        self._bound = {}
        self._checks = (tuple(into), tuple(ref for _, ref in self._into_refs), tuple(shared), tuple(
            ref for _, ref in self._shared_refs
        ))


def _check_in_place(name: str, array: np.ndarray) -> None:
    """An output written in place must be a C-contiguous numpy array (an internal invariant:
    the engine's KV buffers always are)."""
    assert isinstance(array, np.ndarray) and array.flags.c_contiguous, f"{name}: not a C-contiguous buffer"
