"""The small interface every backend implements, and how the engine picks one.

Backends live in `seqport.runtimes` and are imported lazily, so importing the engine costs
nothing for backends that are not used (and never imports torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from seqport.engine.errors import ProviderError

#: backend name -> module in seqport.runtimes that defines `open_session(path, options, initializers)`.
BACKENDS = {"onnxruntime": "seqport.runtimes.onnxruntime", "torch": "seqport.runtimes.torch_eager"}


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
        inter_op_threads: threads across independent operators; 0 lets the backend decide.
        graph_optimization: "disable", "basic", "extended" or "all".
        enable_mem_arena: keep onnxruntime's CPU memory arena (faster, holds memory).
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
        engine_cache_dir: tensorrt only: where compiled TensorRT engines are kept between
            loads (default: optimized_model_dir; None for both builds engines on every load).
        trt_fp16: tensorrt only: let TensorRT run layers in fp16 (trt_fp16_enable).
        trt_max_batch: tensorrt only: the largest batch of the optimization profile built
            from the manifest's dims (see engine/tensorrt.py).
    """

    backend: str = "onnxruntime"
    provider: str = "cpu"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    enable_mem_arena: bool = True
    optimized_model_dir: str | None = None
    provider_options: dict[str, str] = field(default_factory=dict)
    io_binding: bool = False
    torch_checkpoint: str | None = None
    device_loop: bool | None = None
    engine_cache_dir: str | None = None
    trt_fp16: bool = False
    trt_max_batch: int = 16

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
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ProviderError("thread counts must be >= 0 (0 lets the backend decide)")
        if self.trt_max_batch < 1:
            raise ProviderError(f"trt_max_batch must be >= 1, got {self.trt_max_batch}")


def open_runtime(
    path: str | Path, options: RuntimeOptions, initializers: dict[str, np.ndarray] | None = None
) -> Runtime:
    """Load one component file with the backend `options.backend` names.

    Args:
        path: the component's .onnx file.
        options: backend knobs.
        initializers: graph initializer name → C-contiguous array the session uses in place of
            the file's copy, without copying it (the artifact's shared weights, see
            engine/weights.py); dtype and shape must be the graph's. The caller keeps the arrays
            alive as long as the runtime. The torch backend ignores them.

    Raises:
        ProviderError: the backend or provider is not available in this installation.
        RuntimeFailure: the backend cannot load the file (corrupt or incompatible ONNX).
    """
    module_name = BACKENDS[options.backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = "cpu" if options.backend == "onnxruntime" else "export"
        raise ProviderError(
            f"the {options.backend} backend is not installed ({exc.name} is missing); "
            f"install it with: pip install 'seqport[{extra}]'"
        ) from None
    return module.open_session(Path(path), options, initializers)
