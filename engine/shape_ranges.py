"""The shapes the engine will feed each component, as provider-neutral (min, opt, max) ranges.

A compiling provider (TensorRT) builds its kernels for a range of shapes; without one it
rebuilds whenever a dynamic dimension leaves the shapes it has seen, which during generation
is every step. The engine knows those ranges from the manifest's named dims, and hands them to
the runtime (`open_runtime(..., shape_ranges=...)`); each backend turns them into its own
options (runtimes/tensorrt.py). Backends that need no ranges ignore them.

Ranges per named dim: batch 1..max_batch, new tokens 1..max_positions, past 0..max_positions,
source 1..max_positions, preallocated cache 1..max_positions+1; fixed dims (heads, head_dim)
as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from seqport.engine.manifest import Manifest, expand_layers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShapeRange:
    """Smallest, typical and largest shape of one graph input, one entry per axis.

    Args:
        min: the smallest size of each axis the engine feeds.
        opt: the size to optimise for (a decode step of a full batch).
        max: the largest size of each axis the engine feeds.
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


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


def shape_ranges(manifest: Manifest, component: str, max_batch: int) -> dict[str, ShapeRange]:
    """The range of every input of one component, keyed by graph input name.

    Args:
        manifest: the artifact's manifest (dims, max_positions, KV geometry).
        component: a component the manifest names.
        max_batch: the largest batch to cover (RuntimeOptions.trt_max_batch).

    Returns:
        graph input name → ShapeRange. An input with a dim name the engine has no range for
        is left out (logged): the backend then treats it as it would without ranges.
    """
    ranges = dim_ranges(manifest, max_batch)
    num_layers = manifest.kv.num_layers if manifest.kv is not None else 0
    result = {}
    for spec in expand_layers(manifest.components[component].inputs, num_layers).values():
        dims = [_dim(d, ranges, manifest.max_positions) for d in spec.shape]
        if any(d is None for d in dims):
            logger.info("no shape range for an axis of %s (%s): left to the backend", spec.name, spec.shape)
            continue
        low, opt, high = (tuple(axis) for axis in zip(*dims)) if dims else ((), (), ())
        result[spec.name] = ShapeRange(low, opt, high)
    return result


def _dim(dim: int | str, ranges: dict[str, tuple[int, int, int]], top: int) -> tuple[int, int, int] | None:
    if isinstance(dim, int):
        return (dim, dim, dim)
    names = [part.strip() for part in dim.split("+")]  # "past_sequence_length + sequence_length"
    if any(name not in ranges for name in names):
        return None
    low, opt, high = (sum(values) for values in zip(*(ranges[name] for name in names)))
    return (low, opt, min(high, top)) if len(names) > 1 else (low, opt, high)

