"""onnxruntime device loop: tensors stay on the provider's device between decoder steps.

The usual way to lose GPU speed is to copy the KV cache and the full logits between host and
device every step. Here every value is an OrtValue on the provider's device ("cuda" for the
CUDA and TensorRT providers, "cpu" otherwise, where the same code runs):

- inputs are bound with IOBinding (`bind_ortvalue_input`), outputs are allocated on the device
  (`bind_output(name, device)`) and returned as OrtValues, so step n's present K/V is bound as
  step n+1's past K/V without a host copy;
- small graphs built here with onnx.helper (no torch, so old artifacts work) select tokens on
  the device: top-k values and ids plus the row's log-sum-exp, so the host receives (N, k)
  instead of (N, V); and gather rows (beam reorder, finished rows leaving) of many tensors at
  once.

Every host→device upload and device→host fetch goes through `upload`/`fetch`, which record
their bytes in `transfers` (tests assert that only token ids and the k candidates move).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from seqport.engine.device_array import DeviceArray
from seqport.engine.errors import RuntimeFailure
from seqport.runtimes.onnxruntime import OrtSession

_OPSET = 17
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
_NUMPY_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


@dataclass
class TransferLog:
    """Bytes moved between host and device, one (label, bytes) entry per copy."""

    uploads: list[tuple[str, int]] = field(default_factory=list)
    fetches: list[tuple[str, int]] = field(default_factory=list)

    def clear(self) -> None:
        self.uploads.clear()
        self.fetches.clear()


class OrtDevice:
    """The loaded components of one artifact, run with every value kept on their device.

    Args:
        sessions: component name → loaded OrtSession (all on the same provider).
    """

    def __init__(self, sessions: dict[str, OrtSession]) -> None:
        self._sessions = {name: s.inference_session for name, s in sessions.items()}
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

    def run(self, component: str, feeds: dict[str, DeviceArray], outputs: list[str]) -> dict[str, DeviceArray]:
        """Run a component on device values; graph names in, `outputs` (graph names) out."""
        return self._run(self._sessions[component], feeds, outputs, component)

    def take(self, values: list[DeviceArray], rows: np.ndarray) -> list[DeviceArray]:
        """Rows `rows` (int64 (M,)) of every value along axis 0, in one device call."""
        dtypes = tuple(str(v.dtype) for v in values)
        session = self._helper(("take", dtypes), lambda: _take_graph(dtypes))
        feeds = {f"x{i}": v for i, v in enumerate(values)}
        feeds["rows"] = self.upload(rows.astype(np.int64), "rows")
        out = self._run(session, feeds, [f"y{i}" for i in range(len(values))], "take")
        return [out[f"y{i}"] for i in range(len(values))]

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
        session = self._helper(("select", k, str(logits.dtype)), lambda: _select_graph(k, logits.dtype))
        out = self._run(session, {"logits": logits}, ["values", "ids", "lse"], "select")
        return tuple(self.fetch(out[name], name) for name in ("values", "ids", "lse"))  # type: ignore[return-value]

    def _helper(self, key: tuple, build) -> ort.InferenceSession:
        if key not in self._helpers:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            model = build()
            self._helpers[key] = ort.InferenceSession(
                model.SerializeToString(), sess_options=so, providers=self._helper_providers
            )
        return self._helpers[key]

    def _run(self, session, feeds: dict[str, DeviceArray], outputs: list[str], what: str) -> dict[str, DeviceArray]:
        try:
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_ortvalue_input(name, value.handle)
            for name in outputs:
                binding.bind_output(name, self.device, self.device_id)
            session.run_with_iobinding(binding)
            values = binding.get_outputs()
        except Exception as exc:  # translate, never let a raw onnxruntime trace reach users
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise RuntimeFailure(f"onnxruntime failed running {what} on {self.device}: {first}") from None
        return {name: _wrap(value) for name, value in zip(outputs, values)}


def _wrap(value: ort.OrtValue) -> DeviceArray:
    return DeviceArray(value, tuple(value.shape()), np.dtype(_ORT_TO_NUMPY[value.data_type()]))


def _select_graph(k: int, dtype: np.dtype) -> onnx.ModelProto:
    """logits (N, 1, V) → values float (N, k), ids int64 (N, k), lse float (N,)."""
    nodes = [
        helper.make_node("Squeeze", ["logits", "axis1"], ["raw"]),  # (N, V)
        helper.make_node("Cast", ["raw"], ["x"], to=TensorProto.FLOAT),  # fp16 logits: select in fp32
        helper.make_node("TopK", ["x", "k"], ["values", "ids"], axis=-1, largest=1, sorted=1),
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[-1], keepdims=1),  # (N, 1)
        helper.make_node("Sub", ["x", "m"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["e"]),
        helper.make_node("ReduceSum", ["e", "last"], ["s"], keepdims=0),  # (N,)
        helper.make_node("Log", ["s"], ["log_s"]),
        helper.make_node("Squeeze", ["m", "last"], ["m1"]),  # (N,)
        helper.make_node("Add", ["log_s", "m1"], ["lse"]),
    ]
    inits = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("k", TensorProto.INT64, [1], [k]),
    ]
    graph = helper.make_graph(
        nodes,
        "seqport_select",
        [helper.make_tensor_value_info("logits", _NUMPY_TO_ONNX[np.dtype(dtype)], ["N", 1, "V"])],
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", k]),
            helper.make_tensor_value_info("lse", TensorProto.FLOAT, ["N"]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=8)


def _take_graph(dtypes: tuple[str, ...]) -> onnx.ModelProto:
    """x{i} (B, ...) and rows int64 (M,) → y{i} = x{i}[rows] (M, ...), one Gather each."""
    elem = {name: helper.np_dtype_to_tensor_dtype(np.dtype(name)) for name in set(dtypes)}
    inputs = [helper.make_tensor_value_info(f"x{i}", elem[d], None) for i, d in enumerate(dtypes)]
    inputs.append(helper.make_tensor_value_info("rows", TensorProto.INT64, ["M"]))
    outputs = [helper.make_tensor_value_info(f"y{i}", elem[d], None) for i, d in enumerate(dtypes)]
    nodes = [helper.make_node("Gather", [f"x{i}", "rows"], [f"y{i}"], axis=0) for i in range(len(dtypes))]
    graph = helper.make_graph(nodes, "seqport_take", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=8)
