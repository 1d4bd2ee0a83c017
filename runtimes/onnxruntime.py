"""onnxruntime backend: provider choice, session options, errors translated to seqport's."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from seqport.engine.errors import ProviderError, RuntimeFailure
from seqport.engine.runtime import RuntimeOptions

logger = logging.getLogger(__name__)

#: short names users type -> onnxruntime provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "azure": "AzureExecutionProvider",
}
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers, e.g. ["cpu", "cuda"]."""
    by_full = {full: short for short, full in PROVIDER_ALIASES.items()}
    return [by_full.get(p, p) for p in ort.get_available_providers()]


def resolve_provider(name: str) -> list[str]:
    """Provider list for a session: the asked one, then CPU for the operators it lacks.

    Raises:
        ProviderError: the name is unknown, or this onnxruntime build does not offer it.
    """
    full = PROVIDER_ALIASES.get(name.lower(), name)
    available = ort.get_available_providers()
    if full not in available:
        known = ", ".join(available_providers())
        hint = ""
        if full in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            hint = " For GPUs install seqport[gpu] (onnxruntime-gpu) instead of seqport[cpu]."
        raise ProviderError(
            f"execution provider {name!r} is not available in this onnxruntime "
            f"({ort.__version__}); available: {known}.{hint}"
        )
    return [full] if full == "CPUExecutionProvider" else [full, "CPUExecutionProvider"]


def session_options(options: RuntimeOptions, path: Path) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[options.graph_optimization]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.enable_cpu_mem_arena = options.enable_mem_arena
    so.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    if options.optimized_model_dir:
        cache = Path(options.optimized_model_dir)
        cache.mkdir(parents=True, exist_ok=True)
        so.optimized_model_filepath = str(cache / f"{path.stem}.{options.provider}.opt.onnx")
    return so


class OrtSession:
    """One component loaded in onnxruntime; implements the engine's `Runtime` protocol."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        providers = resolve_provider(options.provider)
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options(options, path), providers=providers
            )
        except Exception as exc:  # onnxruntime raises several unrelated types here
            raise RuntimeFailure(
                f"onnxruntime could not load {path}: {_first_line(exc)}. The file is corrupt "
                "or was exported for a newer onnxruntime; re-export or upgrade onnxruntime."
            ) from None
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.path = path

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._outputs, feeds)
        except Exception as exc:  # translate, never let a raw onnxruntime trace reach users
            raise RuntimeFailure(f"onnxruntime failed running {self.path.name}: {_first_line(exc)}") from None
        return dict(zip(self._outputs, values))


def open_session(path: Path, options: RuntimeOptions) -> OrtSession:
    return OrtSession(path, options)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
