"""TensorRT provider options for onnxruntime: engine cache, fp16 and optimization profiles.

TensorRT builds one engine per shape profile; without a profile it rebuilds whenever a dynamic
dimension leaves the shapes it has seen, which during generation is every step. The profiles
come from the provider-neutral shape ranges the engine hands over (engine/shape_ranges.py).
Torch-free and onnxruntime-free: plain strings, as onnxruntime's provider options read them.
"""

from __future__ import annotations

from seqport.engine.runtime import RuntimeOptions
from seqport.engine.shape_ranges import ShapeRange

_TENSORRT_NAMES = ("tensorrt", "tensorrtexecutionprovider")
_PROFILE_KEYS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")


def is_tensorrt(provider: str) -> bool:
    """Whether a provider name (short or full) is TensorRT's."""
    return provider.lower() in _TENSORRT_NAMES


def profile_shapes(ranges: dict[str, ShapeRange]) -> dict[str, str]:
    """trt_profile_min/opt/max_shapes, "name:AxB,name:CxD" as onnxruntime reads them.

    Args:
        ranges: graph input name → its shape range.
    """
    parts: list[list[str]] = [[], [], []]
    for name, shape_range in ranges.items():
        for which, dims in enumerate((shape_range.min, shape_range.opt, shape_range.max)):
            parts[which].append(f"{name}:" + "x".join(map(str, dims)))
    return {key: ",".join(shapes) for key, shapes in zip(_PROFILE_KEYS, parts)}


def tensorrt_provider_options(ranges: dict[str, ShapeRange], options: RuntimeOptions) -> dict[str, str]:
    """The TensorRT provider options of one component: profile shapes, engine cache and fp16
    from `options` (engine_cache_dir or optimized_model_dir, trt_fp16); a user's own
    `provider_options` win over the generated ones.

    Args:
        ranges: graph input name → its shape range (engine.shape_ranges.shape_ranges).
        options: the RuntimeOptions the component is loaded with.

    Returns:
        provider option name → value, as strings.
    """
    generated = profile_shapes(ranges) if ranges else {}
    cache = options.engine_cache_dir or options.optimized_model_dir
    if cache:
        generated.update(
            trt_engine_cache_enable="True", trt_engine_cache_path=str(cache), trt_timing_cache_enable="True"
        )
    if options.trt_fp16:
        generated["trt_fp16_enable"] = "True"
    return {**generated, **{str(k): str(v) for k, v in options.provider_options.items()}}
