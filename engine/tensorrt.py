"""TensorRT provider options derived from the manifest: engine cache, fp16, optimization profiles.

TensorRT builds one engine per shape profile; without a profile it rebuilds whenever a dynamic
dimension leaves the shapes it has seen, which during generation is every step. The profile
ranges come from the manifest's named dims: batch 1..max_batch, new tokens 1..max_positions,
past 0..max_positions, source 1..max_positions; fixed dims (heads, head_dim) as they are.
"""

from __future__ import annotations

from dataclasses import replace

from seqport.engine.manifest import Manifest, TensorSpec, expand_layers
from seqport.engine.runtime import RuntimeOptions

_TENSORRT_NAMES = ("tensorrt", "tensorrtexecutionprovider")


def is_tensorrt(options: RuntimeOptions) -> bool:
    return options.provider.lower() in _TENSORRT_NAMES


def dim_ranges(manifest: Manifest, max_batch: int) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every named dim a component input may have."""
    top = manifest.max_positions
    ranges = {
        "batch_size": (1, max_batch, max_batch),
        "sequence_length": (1, 1, top),
        "past_sequence_length": (0, top // 2, top),
        "encoder_sequence_length": (1, top // 2, top),
        "num_logits": (1, 1, top),
        "cache_length": (1, top // 2, top + 1),  # preallocated buffers: first tokens + max_new_tokens
    }
    if manifest.kv is not None:
        ranges["num_kv_heads"] = (manifest.kv.num_kv_heads,) * 3
        ranges["head_dim"] = (manifest.kv.head_dim,) * 3
    return ranges


def profile_shapes(manifest: Manifest, component: str, max_batch: int) -> dict[str, str]:
    """trt_profile_min/opt/max_shapes of one component, "name:AxB,name:CxD" as onnxruntime reads them."""
    ranges = dim_ranges(manifest, max_batch)
    num_layers = manifest.kv.num_layers if manifest.kv is not None else 0
    inputs = expand_layers(manifest.components[component].inputs, num_layers)
    parts: list[list[str]] = [[], [], []]
    for spec in inputs.values():
        for which, dims in enumerate(zip(*(_dim(d, ranges, spec, manifest.max_positions) for d in spec.shape))):
            parts[which].append(f"{spec.name}:" + "x".join(map(str, dims)))
    keys = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    return {key: ",".join(shapes) for key, shapes in zip(keys, parts)}


def tensorrt_options(manifest: Manifest, component: str, options: RuntimeOptions) -> RuntimeOptions:
    """`options` with the TensorRT provider options of one component filled in (a user's own
    provider_options win): engine cache, fp16 and the profile shapes."""
    generated = profile_shapes(manifest, component, options.trt_max_batch)
    cache = options.engine_cache_dir or options.optimized_model_dir
    if cache:
        generated.update(
            trt_engine_cache_enable="True", trt_engine_cache_path=str(cache), trt_timing_cache_enable="True"
        )
    if options.trt_fp16:
        generated["trt_fp16_enable"] = "True"
    return replace(options, provider_options={**generated, **options.provider_options})


def _dim(dim: int | str, ranges: dict[str, tuple[int, int, int]], spec: TensorSpec, top: int) -> tuple[int, int, int]:
    if isinstance(dim, int):
        return (dim, dim, dim)
    names = [part.strip() for part in dim.split("+")]  # "past_sequence_length + sequence_length"
    missing = [name for name in names if name not in ranges]
    if missing:
        raise ValueError(f"no TensorRT profile range for dim {missing} of {spec.name}")  # internal: a new dim name
    low, opt, high = (sum(values) for values in zip(*(ranges[name] for name in names)))
    return (low, opt, min(high, top)) if len(names) > 1 else (low, opt, high)
