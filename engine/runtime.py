"""The small interface every backend implements, and how the engine picks one.

Backends are found by name in the `seqport.runtimes` entry-point group (pyproject.toml), so the
engine names none of them but its default, and a backend package can add one without touching
the engine. Each is imported lazily: importing the engine costs nothing for backends that are
not used (and never imports torch).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from seqport.engine.errors import ProviderError

if TYPE_CHECKING:
    from seqport.engine.shape_ranges import ShapeRange

#: entry-point group: backend name -> module that defines `open_session(path, options, initializers, shape_ranges)`.
ENTRY_POINT_GROUP = "seqport.runtimes"
#: the default backend, known even where the package's metadata is not installed.
_BUILTIN = {"onnxruntime": "seqport.runtimes.onnxruntime"}
#: the extra that installs each registered backend's dependencies, for the message when one is missing.
_EXTRAS = {"onnxruntime": "cpu", "torch": "export"}


class _Backends(Mapping[str, str]):
    """backend name -> module name, read from the entry points on first use."""

    def __init__(self) -> None:
        self._found: dict[str, str] | None = None

    def _modules(self) -> dict[str, str]:
        if self._found is None:
            found = dict(_BUILTIN)
            found.update({ep.name: ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)})
            self._found = found
        return self._found

    def __getitem__(self, name: str) -> str:
        return self._modules()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules())

    def __len__(self) -> int:
        return len(self._modules())


#: backend name -> module in the `seqport.runtimes` entry-point group ("onnxruntime", "torch").
BACKENDS: Mapping[str, str] = _Backends()


class Runtime(Protocol):
    """One loaded component: numpy feeds in, numpy outputs out."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(
        self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Graph-named feeds → graph-named outputs. `into` names outputs the backend may write
        in place into the given arrays (a preallocated KV buffer that is also an input); the
        returned dict is always the truth, whether or not the backend did."""
        ...


@dataclass(frozen=True)
class RuntimeOptions:
    """Backend knobs, typed (no **kwargs).

    Args:
        backend: "onnxruntime" (default) or "torch" (reference, needs the export extra).
        provider: execution provider by short name ("cpu", "cuda", "tensorrt", "openvino", ...)
            or by onnxruntime's full name ("CUDAExecutionProvider").
        intra_op_threads: threads inside one operator; 0 lets the backend decide.
        component_threads: intra-op threads of named components, in place of intra_op_threads
            for them (e.g. {"encoder": 2}: a server's encoder runs once per request, beside the
            decoder's steps, and starts requests sooner on every core; docs/serving.md).
        inter_op_threads: threads across independent operators; 0 lets the backend decide.
        graph_optimization: "disable", "basic", "extended" or "all".
        enable_mem_arena: keep onnxruntime's CPU memory arena (faster, holds memory).
        allow_spinning: let the intra-op threads spin while they wait for work (onnxruntime's
            default: the lowest latency of one call, at the cost of a busy core). A server turns it
            off so that its event loop and clients get those cores (docs/serving.md).
        optimized_model_dir: where onnxruntime saves each optimized graph; the next load of the
            same file (same provider, level and onnxruntime) reads the saved graph with
            optimization disabled, so it is fast. None disables the cache.
        provider_options: options of the execution provider, as onnxruntime documents them
            (e.g. {"device_id": "1"} for CUDA, {"device_type": "GPU"} for OpenVINO).
        io_binding: run through onnxruntime's IOBinding (inputs bound from numpy, outputs
            allocated by the provider and copied back to numpy). Same results; the basis for
            keeping tensors on a device.
        torch_checkpoint: torch backend only: the checkpoint folder to load the reference
            model from; None uses the manifest's provenance.source.
        device_loop: generate with the KV cache, encoder outputs and logits kept on the
            provider's device, only token ids (and k candidates) crossing to the host (see
            docs/gpu.md). None: on for the cuda and tensorrt providers, off otherwise; True
            runs the same code on the CPU.
        engine_cache_dir: provider option, tensorrt only: where compiled TensorRT engines are
            kept between loads (default: optimized_model_dir; None for both builds engines on
            every load). Read by the onnxruntime backend (runtimes/tensorrt.py).
        trt_fp16: provider option, tensorrt only: let TensorRT run layers in fp16
            (trt_fp16_enable).
        trt_max_batch: the largest batch of the shape ranges the engine hands the runtime
            (engine/shape_ranges.py); the onnxruntime backend builds TensorRT's optimization
            profiles from them.
        huge_pages: once a model's sessions are built, move the memory they allocated onto
            2 MiB pages (Linux 6.1+, engine/huge_pages.py): a decode step that streams every
            weight runs a few percent faster (2-10 % on SmolLM2); it costs up to 2.5 ms per MiB
            of weights, once, at load. A no-op elsewhere.
    """

    backend: str = "onnxruntime"
    provider: str = "cpu"
    intra_op_threads: int = 0
    component_threads: dict[str, int] = field(default_factory=dict)
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    enable_mem_arena: bool = True
    allow_spinning: bool = True
    optimized_model_dir: str | None = None
    provider_options: dict[str, str] = field(default_factory=dict)
    io_binding: bool = False
    torch_checkpoint: str | None = None
    device_loop: bool | None = None
    engine_cache_dir: str | None = None
    trt_fp16: bool = False
    trt_max_batch: int = 16
    huge_pages: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ProviderError(
                f"unknown runtime backend {self.backend!r}; supported backends are: " + ", ".join(BACKENDS)
            )
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise ProviderError(
                f"graph_optimization must be one of disable, basic, extended, all; "
                f"got {self.graph_optimization!r}"
            )
        threads = [self.intra_op_threads, self.inter_op_threads, *self.component_threads.values()]
        if any(not isinstance(n, int) or n < 0 for n in threads):
            raise ProviderError("thread counts must be integers >= 0 (0 lets the backend decide)")
        if self.trt_max_batch < 1:
            raise ProviderError(f"trt_max_batch must be >= 1, got {self.trt_max_batch}")

    def for_component(self, name: str) -> RuntimeOptions:
        """The options component `name` opens with: its component_threads entry, if any."""
        threads = self.component_threads.get(name)
        return self if threads is None else dataclasses.replace(self, intra_op_threads=threads)


def open_runtime(
    path: str | Path,
    options: RuntimeOptions,
    initializers: dict[str, np.ndarray] | None = None,
    shape_ranges: dict[str, ShapeRange] | None = None,
) -> Runtime:
    """Load one component file with the backend `options.backend` names.

    Args:
        path: the component's .onnx file.
        options: backend knobs.
        initializers: graph initializer name → C-contiguous array the session uses in place of
            the file's copy, without copying it (the artifact's shared weights, see
            engine/weights.py); dtype and shape must be the graph's. The caller keeps the arrays
            alive as long as the runtime. The torch backend ignores them.
        shape_ranges: graph input name → the (min, opt, max) shapes the engine will feed
            (engine/shape_ranges.py); a compiling provider builds for them (TensorRT's
            optimization profiles). None: the backend decides.

    Raises:
        ProviderError: the backend or provider is not available in this installation.
        RuntimeFailure: the backend cannot load the file (corrupt or incompatible ONNX).
    """
    module_name = BACKENDS[options.backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(options.backend, options.backend)
        raise ProviderError(
            f"the {options.backend} backend is not installed ({exc.name} is missing); "
            f"install it with: pip install 'seqport[{extra}]'"
        ) from None
    return module.open_session(Path(path), options, initializers, shape_ranges)
