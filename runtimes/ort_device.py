"""onnxruntime device placement: tensors stay on the provider's device between decoder steps.

`OrtDevice` is the engine's `Placement` (engine/placement.py) for onnxruntime; the model kinds'
one step code runs on it as on the host. `open_placement` decides, per load, whether a model
runs here: the device loop is on for the CUDA and TensorRT providers unless
RuntimeOptions.device_loop says otherwise.

The usual way to lose GPU speed is to copy the KV cache and the full logits between host and
device every step. Here every value is an OrtValue on the provider's device ("cuda" for the
CUDA and TensorRT providers, "cpu" otherwise, where the same code runs):

- inputs are bound with IOBinding (`bind_ortvalue_input`), outputs are allocated on the device
  (`bind_output(name, device)`) and returned as OrtValues, so step n's present K/V is bound as
  step n+1's past K/V without a host copy;
- small helper graphs select tokens on the device: top-k values and ids plus the row's
  log-sum-exp, so the host receives (N, k) instead of (N, V); and gather rows (beam reorder,
  finished rows leaving). They are built at development time (runtimes/graphs/build.py) and
  shipped as package data, so the engine needs no `onnx` package and old artifacts work.

Every host→device upload and device→host fetch goes through `upload`/`fetch`, which record
their bytes in `transfers` (tests assert that only token ids and the k candidates move).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import onnxruntime as ort

from seqport.engine.config import GenerationConfig
from seqport.engine.device_array import Candidates, DeviceArray
from seqport.engine.device_search import as_candidates, plan_selection
from seqport.engine.errors import RuntimeFailure
from seqport.engine.placement import HOST, Placement, Selection
from seqport.engine.runtime import Runtime, RuntimeOptions
from seqport.runtimes.onnxruntime import OrtSession

#: providers (short and full names) on which the device loop is on unless options say otherwise.
_DEVICE_PROVIDERS = {"cuda", "tensorrt", "cudaexecutionprovider", "tensorrtexecutionprovider"}
#: providers whose outputs live in CUDA memory.
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass
class TransferLog:
    """Bytes moved between host and device, one (label, bytes) entry per copy."""

    uploads: list[tuple[str, int]] = field(default_factory=list)
    fetches: list[tuple[str, int]] = field(default_factory=list)

    def clear(self) -> None:
        self.uploads.clear()
        self.fetches.clear()


def wants_device_loop(options: RuntimeOptions) -> bool:
    """options.device_loop if set, else on for the CUDA and TensorRT providers."""
    if options.device_loop is not None:
        return options.device_loop
    return options.backend == "onnxruntime" and options.provider.lower() in _DEVICE_PROVIDERS


def open_placement(runtimes: dict[str, Runtime], options: RuntimeOptions) -> Placement:
    """Where a generating model loaded with `options` runs (engine.placement.open_placement
    calls this): an `OrtDevice` over its sessions if the device loop is on, else the host."""
    return OrtDevice(runtimes) if wants_device_loop(options) else HOST  # type: ignore[arg-type]


class OrtDevice:
    """The loaded components of one artifact, run with every value kept on their device
    (the engine's `Placement` protocol, plus `select` and the `transfers` log).

    Args:
        sessions: component name → loaded OrtSession (all on the same provider).
    """

    def __init__(self, sessions: dict[str, OrtSession]) -> None:
        self._sessions = {name: s.inference_session for name, s in sessions.items()}
        self._outputs = {name: [o.name for o in s.get_outputs()] for name, s in self._sessions.items()}
        first = next(iter(self._sessions.values()))
        provider = first.get_providers()[0]
        options = first.get_provider_options().get(provider, {})
        self.device = "cuda" if provider in _CUDA_PROVIDERS else "cpu"
        self.device_id = int(options.get("device_id", 0)) if self.device == "cuda" else 0
        # helper graphs are tiny: plain CUDA (no TensorRT engine build) on GPUs, else CPU
        self._helper_providers = (
            [("CUDAExecutionProvider", {"device_id": str(self.device_id)}), "CPUExecutionProvider"]
            if self.device == "cuda"
            else ["CPUExecutionProvider"]
        )
        self._helpers: dict[tuple, ort.InferenceSession] = {}
        self._k_values: dict[int, DeviceArray] = {}
        self.transfers = TransferLog()

    def upload(self, array: np.ndarray, label: str = "") -> DeviceArray:
        """Copy a host array to the device (counted)."""
        array = np.ascontiguousarray(array)
        self.transfers.uploads.append((label, array.nbytes))
        value = ort.OrtValue.ortvalue_from_numpy(array, self.device, self.device_id)
        return DeviceArray(value, tuple(array.shape), array.dtype, keepalive=array)

    def fetch(self, value: DeviceArray, label: str = "") -> np.ndarray:
        """Copy a device value to the host (counted)."""
        array = value.handle.numpy()
        self.transfers.fetches.append((label, array.nbytes))
        return array

    def run(
        self,
        component: str,
        runtime: Runtime,
        feeds: dict[str, DeviceArray | np.ndarray],
        into: dict[str, DeviceArray] | None = None,
    ) -> dict[str, DeviceArray]:
        """Run a component on device values (host arrays are uploaded, counted); graph names
        in, every output out, kept on the device. Outputs named in `into` are written into
        those values (a preallocated KV buffer bound as both past and present is updated in
        place). `runtime` is unused: the component's session is bound directly."""
        feeds = {k: v if isinstance(v, DeviceArray) else self.upload(v, k) for k, v in feeds.items()}
        return self._run(self._sessions[component], feeds, self._outputs[component], component, into or {})

    def zeros(self, shape: tuple[int, ...], dtype: str) -> DeviceArray:
        """A zero-filled value made on the device (only the shape crosses, counted)."""
        session = self._helper(("zeros", str(dtype)), f"zeros_{dtype}.onnx")
        feeds = {"shape": self.upload(np.array(shape, dtype=np.int64), "buffer shape")}
        return self._run(session, feeds, ["y"], "zeros")["y"]

    def take(self, values: list[DeviceArray], rows: np.ndarray) -> list[DeviceArray]:
        """Rows `rows` (int64 (M,)) of every value along axis 0, in one device call."""
        device_rows = self.upload(rows.astype(np.int64), "rows")
        taken = []
        for value in values:  # one Gather per tensor: the shipped graph takes a single input
            session = self._helper(("take", str(value.dtype)), f"take_{value.dtype}.onnx")
            taken.append(self._run(session, {"x": value, "rows": device_rows}, ["y"], "take")["y"])
        return taken

    def select(self, logits: DeviceArray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of the last position's logits, on the device.

        Args:
            logits: float (N, 1, V) on the device.
            k: candidates per row (1 = argmax; the first id on ties, as numpy's argmax).

        Returns:
            values float32 (N, k) best first, ids int64 (N, k), log-sum-exp float32 (N,) of
            each whole row; only these cross to the host.
        """
        k = min(k, logits.shape[-1])
        session = self._helper(("select", str(logits.dtype)), f"select_{logits.dtype}.onnx")
        if k not in self._k_values:  # k lives on the device, uploaded once per value of k
            self._k_values[k] = self.upload(np.array([k], dtype=np.int64), "k")
        feeds = {"logits": logits, "k": self._k_values[k]}
        out = self._run(session, feeds, ["values", "ids", "lse"], "select")
        return tuple(self.fetch(out[name], name) for name in ("values", "ids", "lse"))  # type: ignore[return-value]

    def plan(self, config: GenerationConfig, eos: tuple[int, ...], vocab_size: int) -> Selection | None:
        """Top-k candidates on the device where `config` allows (engine/device_search.py)."""
        return plan_selection(config, eos, vocab_size)

    def logits(self, logits: DeviceArray, selection: Selection | None) -> np.ndarray | Candidates:
        """(N, 1, V) device logits → the selection's candidates (only they cross), or the full
        last-position logits float32 (N, V) when the host search needs them."""
        if selection is None:  # the processors need the whole distribution
            return self.fetch(logits, "logits")[:, -1, :].astype(np.float32)  # (N, V)
        return as_candidates(*self.select(logits, selection.k), selection)

    def _helper(self, key: tuple, graph: str) -> ort.InferenceSession:
        if key not in self._helpers:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            self._helpers[key] = ort.InferenceSession(_graph(graph), sess_options=so, providers=self._helper_providers)
        return self._helpers[key]

    def _run(
        self, session, feeds: dict[str, DeviceArray], outputs: list[str], what: str, into: dict | None = None
    ) -> dict[str, DeviceArray]:
        into = into or {}
        try:
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_ortvalue_input(name, value.handle)
            for name in outputs:
                if name in into:
                    binding.bind_ortvalue_output(name, into[name].handle)
                else:
                    binding.bind_output(name, self.device, self.device_id)
            session.run_with_iobinding(binding)
            values = binding.get_outputs()
        except Exception as exc:  # translate, never let a raw onnxruntime trace reach users
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise RuntimeFailure(f"onnxruntime failed running {what} on {self.device}: {first}") from None
        return {name: into[name] if name in into else _wrap(value) for name, value in zip(outputs, values)}


def _wrap(value: ort.OrtValue) -> DeviceArray:
    return DeviceArray(value, tuple(value.shape()), np.dtype(_ORT_TO_NUMPY[value.data_type()]))


def _graph(name: str) -> bytes:
    """A shipped helper graph (runtimes/graphs/*.onnx)."""
    path = resources.files("seqport.runtimes") / "graphs" / name
    if not path.is_file():
        raise RuntimeFailure(f"the device loop has no helper graph {name}: unsupported dtype, or reinstall seqport")
    return path.read_bytes()
