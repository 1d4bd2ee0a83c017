"""onnxruntime backend: provider choice, session options, optimized-model cache, IOBinding.

Errors are translated to seqport's: a missing provider is a ProviderError naming the ones this
build offers; a file onnxruntime cannot load or run is a RuntimeFailure.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqport.engine.errors import ProviderError, RuntimeFailure
from seqport.engine.runtime import RuntimeOptions
from seqport.engine.shape_ranges import ShapeRange
from seqport.runtimes.ort_binding import InPlaceBinding
from seqport.runtimes.tensorrt import is_tensorrt, tensorrt_provider_options

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
#: providers whose optimized graph is a plain onnxruntime graph that can be saved and reloaded.
#: Compiling providers (TensorRT, OpenVINO) keep their own engine caches instead (see below).
_GRAPH_CACHE_PROVIDERS = {
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DnnlExecutionProvider",
    "DmlExecutionProvider",
}
#: where a compiling provider keeps its compiled engines, filled from optimized_model_dir.
_ENGINE_CACHE_OPTIONS = {
    "TensorrtExecutionProvider": {"trt_engine_cache_enable": "True", "trt_engine_cache_path": "{dir}"},
    "OpenVINOExecutionProvider": {"cache_dir": "{dir}"},
}
#: session config keys: where a saved optimized graph keeps its weights, and from what size.
_EXTERNAL_FILE = "session.optimized_model_external_initializers_file_name"
_EXTERNAL_MIN_BYTES = "session.optimized_model_external_initializers_min_size_in_bytes"
#: IOBinding output device per provider (outputs stay there until copied back to numpy).
_OUTPUT_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers, e.g. ["cpu", "cuda"]."""
    by_full = {full: short for short, full in PROVIDER_ALIASES.items()}
    return [by_full.get(p, p) for p in ort.get_available_providers()]


def full_provider_name(name: str) -> str:
    return PROVIDER_ALIASES.get(name.lower(), name)


def resolve_provider(name: str) -> list[str]:
    """Provider list for a session: the asked one, then CPU for the operators it lacks.

    Raises:
        ProviderError: the name is unknown, or this onnxruntime build does not offer it.
    """
    full = full_provider_name(name)
    available = ort.get_available_providers()
    if full not in available:
        known = ", ".join(available_providers())
        hint = ""
        if full in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            hint = " For GPUs install seqport[gpu] (onnxruntime-gpu) instead of seqport[cpu]."
        if full == "TensorrtExecutionProvider":
            hint += " TensorRT also needs NVIDIA's TensorRT libraries (pip install tensorrt) on the library path."
        raise ProviderError(
            f"execution provider {name!r} is not available in this onnxruntime "
            f"({ort.__version__}); available: {known}.{hint}"
        )
    return [full] if full == "CPUExecutionProvider" else [full, "CPUExecutionProvider"]


def session_options(options: RuntimeOptions, level: str | None = None) -> ort.SessionOptions:
    """onnxruntime SessionOptions from RuntimeOptions (`level` overrides graph_optimization)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[level or options.graph_optimization]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.enable_cpu_mem_arena = options.enable_mem_arena
    if not options.allow_spinning:  # idle intra-op threads sleep instead of holding a core
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    return so


def cached_graph_path(path: Path, options: RuntimeOptions) -> Path | None:
    """Where the optimized graph of `path` is saved, or None when no cache applies.

    The name holds a digest of everything that changes the optimized graph: the source file
    (path, size, mtime), provider and its options, optimization level and onnxruntime version.
    """
    full = full_provider_name(options.provider)
    if not options.optimized_model_dir or options.graph_optimization == "disable":
        return None
    if full not in _GRAPH_CACHE_PROVIDERS:
        return None
    stat = path.stat()
    key = repr(
        (
            str(path.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
            full,
            sorted(options.provider_options.items()),
            options.graph_optimization,
            ort.__version__,
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(options.optimized_model_dir) / f"{path.stem}.{digest}.opt.onnx"


def _provider_list(options: RuntimeOptions, shape_ranges: dict[str, ShapeRange] | None = None) -> list:
    names = resolve_provider(options.provider)
    provider_options = {str(k): str(v) for k, v in options.provider_options.items()}
    if is_tensorrt(names[0]):  # profile shapes from the engine's ranges, engine cache, fp16
        provider_options = tensorrt_provider_options(shape_ranges or {}, options)
    template = _ENGINE_CACHE_OPTIONS.get(names[0], {})
    if options.optimized_model_dir and template and not provider_options.keys() & template.keys():
        Path(options.optimized_model_dir).mkdir(parents=True, exist_ok=True)
        provider_options.update({k: v.format(dir=options.optimized_model_dir) for k, v in template.items()})
    return [(names[0], provider_options)] + names[1:]


class OrtSession:
    """One component loaded in onnxruntime; implements the engine's `Runtime` protocol.

    Attributes:
        path: the component file asked for.
        loaded_from: the file onnxruntime actually read (the saved optimized graph on a cache hit).
    """

    def __init__(
        self,
        path: Path,
        options: RuntimeOptions,
        initializers: dict[str, np.ndarray] | None = None,
        shape_ranges: dict[str, ShapeRange] | None = None,
    ) -> None:
        self.path = path
        # onnxruntime reads these buffers in place: the arrays and OrtValues live as long as the session
        self._initializers = _initializer_values(path, initializers or {})
        providers = _provider_list(options, shape_ranges)
        cache = cached_graph_path(path, options)
        self._session = None
        if cache is not None and cache.is_file():
            self._session = self._load_cached(cache, options, providers)
        if self._session is None:
            self._session = self._load(path, options, providers, cache)
            self.loaded_from = path
        self._check_provider(providers[0][0])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._device = _OUTPUT_DEVICE.get(providers[0][0], "cpu") if options.io_binding else None
        self._in_place = threading.local()  # .binding: this thread's InPlaceBinding, made on first use
        # on the CPU, the pybind session's run below InferenceSession.run: that wrapper re-checks
        # that no input is missing with a list scan per input (quadratic in the 60+ feeds of a
        # 30-layer decoder) every step, which the engine's manifest check already covers; other
        # providers keep the wrapper (its provider fallback)
        cpu = providers[0][0] == "CPUExecutionProvider"
        self._run_numpy = getattr(self._session, "_sess", self._session).run if cpu else self._session.run

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    @property
    def inference_session(self) -> ort.InferenceSession:
        """The underlying onnxruntime session (the device loop binds OrtValues to it)."""
        return self._session

    def run(self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run on numpy feeds; outputs named in `into` are written in place (see `_run_into`)."""
        try:
            if into and self._device in (None, "cpu"):
                return self._run_into(feeds, into)
            if self._device is None:
                values = self._run_numpy(self._outputs, feeds, None)
            else:
                values = self._run_bound(feeds)
        except Exception as exc:  # translate, never let a raw onnxruntime trace reach users
            raise RuntimeFailure(f"onnxruntime failed running {self.path.name}: {_first_line(exc)}") from None
        return dict(zip(self._outputs, values))

    def _run_into(self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """IOBinding on host memory: every feed and every `into` array is wrapped, not copied,
        so an output bound to the array its input came from is written in place; a preallocated
        decoder's cache update then touches only the new slots. The in-place arrays stay bound
        from one step to the next (ort_binding.InPlaceBinding); other outputs are allocated by
        onnxruntime."""
        binding = getattr(self._in_place, "binding", None)
        if binding is None:  # one per thread: a binding is state, a session may serve several threads
            binding = self._in_place.binding = InPlaceBinding(self._session, self._outputs)
        return binding.run(feeds, into)

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """IOBinding: inputs bound from host memory, outputs allocated on the provider's device."""
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._outputs:
            binding.bind_output(name, self._device)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _session_options(self, options: RuntimeOptions, level: str | None = None) -> ort.SessionOptions:
        so = session_options(options, level)
        for name, (_, value) in self._initializers.items():
            so.add_initializer(name, value)
        return so

    def _load(self, path: Path, options: RuntimeOptions, providers: list, cache: Path | None) -> ort.InferenceSession:
        so = self._session_options(options)
        partial = None
        if cache is not None:  # written under a private name, renamed once complete (no torn reads)
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
            so.optimized_model_filepath = str(partial)
            # weights as external data beside it, so a cache hit memory-maps them too; one data
            # file per cached graph (a shared name would let components overwrite each other's)
            so.add_session_config_entry(_EXTERNAL_FILE, _cache_data(cache).name)
            so.add_session_config_entry(_EXTERNAL_MIN_BYTES, "1024")
        session = _create(path, so, providers)
        if partial is not None and partial.is_file():
            os.replace(partial, cache)
            logger.debug("saved the optimized graph of %s to %s", path.name, cache)
        return session

    def _load_cached(self, cache: Path, options: RuntimeOptions, providers: list) -> ort.InferenceSession | None:
        """The saved graph is already optimized: load it with optimization disabled."""
        try:
            session = _create(cache, self._session_options(options, level="disable"), providers)
        except RuntimeFailure as exc:
            logger.warning("ignoring the unreadable optimized-graph cache %s (%s)", cache, exc)
            cache.unlink(missing_ok=True)
            _cache_data(cache).unlink(missing_ok=True)
            return None
        self.loaded_from = cache
        logger.debug("loaded %s from the optimized-graph cache %s", self.path.name, cache)
        return session

    def _check_provider(self, asked: str) -> None:
        # onnxruntime falls back to CPU when a GPU provider cannot start (missing CUDA libraries):
        # that would silently measure the CPU, so it is an error here.
        if asked not in self._session.get_providers():
            raise ProviderError(
                f"onnxruntime could not start {asked} for {self.path.name} and fell back to "
                f"{', '.join(self._session.get_providers())}; check the provider's libraries "
                "(CUDA/cuDNN for cuda and tensorrt) and its provider_options."
            )


def _cache_data(cache: Path) -> Path:
    """The external-data file of a saved optimized graph."""
    return cache.with_name(f"{cache.stem}.data")


def _initializer_values(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, ort.OrtValue]]:
    """Wrap each array without copying; onnxruntime would crash on a wrong layout, so check it first.

    Raises:
        RuntimeFailure: an array that is not a C-contiguous numeric numpy array.
    """
    values = {}
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or array.dtype.kind not in "biuf":
            raise RuntimeFailure(
                f"initializer {name!r} for {path.name} must be a C-contiguous numeric numpy array "
                f"(got {type(array).__name__}); pass the arrays seqport.engine.weights.open_shared_weights returns."
            )
        values[name] = (array, ort.OrtValue.ortvalue_from_numpy(array))
    return values


def _create(path: Path, so: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types here
        raise RuntimeFailure(
            f"onnxruntime could not load {path}: {_first_line(exc)}. The file is corrupt "
            "or was exported for a newer onnxruntime; re-export or upgrade onnxruntime."
        ) from None


def open_session(
    path: Path,
    options: RuntimeOptions,
    initializers: dict[str, np.ndarray] | None = None,
    shape_ranges: dict[str, ShapeRange] | None = None,
) -> OrtSession:
    """Load one component (the `seqport.runtimes` entry point "onnxruntime").

    Args:
        path: the component's .onnx file.
        options: backend knobs; for TensorRT, engine_cache_dir, trt_fp16 and provider_options.
        initializers: graph initializer name → array used in place (shared weights).
        shape_ranges: graph input name → shapes the engine will feed; TensorRT's optimization
            profiles are built from them, other providers ignore them.

    Raises:
        ProviderError: the provider is not available, or fell back to another.
        RuntimeFailure: onnxruntime cannot load the file.
    """
    return OrtSession(path, options, initializers, shape_ranges)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
