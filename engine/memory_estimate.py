"""Estimate what a generation request will hold in memory, and refuse one that cannot fit
before any work starts (issue #12: num_beams=10000 on a small translator hung with no warning).

The estimate counts the arrays that grow with batch × beams × length: the self-attention KV
cache (past and present side by side during a step, as a growing cache has them), the
encoder's cross-attention K/V for every row, and one step's logits (float32 from the model
plus the float64 copy processors and beam search work on). Weights and onnxruntime's own
buffers are not counted: the figure is a lower bound, good enough to catch the impossible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError
from seqport.engine.manifest import Manifest

_GIB = 2**30


def request_rows(config: GenerationConfig, inputs: int) -> int:
    """Decoder rows of the largest batch: inputs per batch × beams (or samples)."""
    per_batch = min(inputs, config.batch_size) if config.batch_size else inputs
    per_input = config.num_beams if config.num_beams > 1 else config.num_return_sequences
    return per_batch * per_input


def estimate_request_bytes(manifest: Manifest, config: GenerationConfig, batch: Sequence[Sequence[int]]) -> int:
    """Bytes the growing arrays of one request reach (see the module docstring).

    Args:
        manifest: the artifact's manifest (KV geometry and dtype, vocabulary, architecture).
        config: the request's options (num_beams, num_return_sequences, max_new_tokens, ...).
        batch: the request's input id lists.

    Returns:
        The estimate in bytes (0 for an artifact without a KV cache).
    """
    kv = manifest.kv
    if kv is None or not batch:
        return 0
    rows, longest = request_rows(config, len(batch)), max(len(ids) for ids in batch)
    decoder_only = manifest.architecture == "decoder-only"
    length = (longest if decoder_only else 1) + len(config.prefix_ids) + config.max_new_tokens
    per_token = 2 * kv.num_layers * kv.num_kv_heads * kv.head_dim * np.dtype(kv.dtype).itemsize  # K and V
    self_kv = 2 * rows * length * per_token  # past and present of a step side by side
    cross = 0 if decoder_only else rows * longest * per_token
    logits = rows * manifest.vocab_size * (4 + 8)
    return self_kv + cross + logits


def check_request(manifest: Manifest, config: GenerationConfig, batch: Sequence[Sequence[int]]) -> None:
    """Refuse a request that cannot run, before any work starts.

    Raises:
        ConfigError: prefix_ids leave no position for a new token, or the memory estimate
            exceeds config.max_memory_bytes (the message gives both figures and how to go on).
    """
    longest = max((len(ids) for ids in batch), default=0)
    used = len(config.prefix_ids) + (longest if manifest.architecture == "decoder-only" else 0)
    if config.prefix_ids and used >= manifest.max_positions:
        raise ConfigError(
            f"prefix_ids holds {len(config.prefix_ids)} ids: with the prompt that is {used} of the model's "
            f"{manifest.max_positions} positions, leaving none to generate; shorten prefix_ids"
        )
    estimate = estimate_request_bytes(manifest, config, batch)
    if estimate > config.max_memory_bytes:
        rows = request_rows(config, len(batch))
        raise ConfigError(
            f"this request needs about {estimate / _GIB:.2f} GiB (KV cache and logits for {rows} rows of up to "
            f"{config.max_new_tokens} new tokens), more than max_memory_bytes={config.max_memory_bytes} "
            f"({config.max_memory_bytes / _GIB:.2f} GiB); lower num_beams, num_return_sequences, max_new_tokens "
            "or batch_size, or raise max_memory_bytes if the machine has the memory"
        )
