"""The encoder-decoder graphs of an adapter: the encoder (with every layer's cross K/V) and the
decoder step (growing or preallocated cache; declared states go through decoder_state.py).

export/pipeline.py calls these while it builds an artifact; validation comes after.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from seqport.engine.errors import ExportError
from seqport.engine.manifest import KV_ALLOCATIONS, Component, sha256_of
from seqport.export.adapter import ModelSpec
from seqport.export.attention import attention_mode
from seqport.export.attention_seq2seq import TRANSLATIONS
from seqport.export.cache_slots import preallocate
from seqport.export.components import (
    DecoderComponent,
    EncoderComponent,
    PreallocatedDecoderComponent,
    RowPositionedDecoderComponent,
    decoder_contract,
    encoder_contract,
    flat_kv,
)
from seqport.export.decoder_state import export_state_decoder, needs_state_path
from seqport.export.onnx_export import dynamic_axes, export_component


def example_sources(spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    # sizes >= 2 everywhere: torch.export specialises dims that are 0 or 1 in the example.
    ids = torch.full((2, 5), (spec.pad or 0) + 5, dtype=torch.long) % spec.vocab_size
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    return ids, mask


def export_encoder(adapter, spec: ModelSpec, folder: Path, attention: str = "portable") -> Component:
    """The `encoder` graph, its attention "portable" or "fused" (export/attention_seq2seq.py)."""
    inputs, outputs = encoder_contract("float32")
    dyn = tuple(dynamic_axes(inputs[name]) for name in ("input_ids", "attention_mask"))
    path = folder / "encoder.onnx"
    with attention_mode(adapter, attention):
        export_component(
            EncoderComponent(adapter), example_sources(spec), dyn, inputs, outputs, spec.num_layers, path, TRANSLATIONS
        )
    return Component(file=path.name, sha256=sha256_of(path), inputs=inputs, outputs=outputs)


def export_decoder(
    adapter, spec: ModelSpec, folder: Path, allocation: str = "growing", attention: str = "portable"
) -> Component:
    """The `decoder` step graph (growing or preallocated cache), its attention "portable" or
    "fused" (export/attention_seq2seq.py; adapters with declared states have no fused path)."""
    if needs_state_path(adapter, spec):  # declared states or own positions: export/decoder_state.py
        if attention != "portable":
            raise ExportError(
                "--attention fused: a decoder with declared states or its own positions has no fused "
                "path; export with --attention portable"
            )
        return export_state_decoder(adapter, spec, folder, allocation, example_sources(spec))
    row_positions = allocation == "growing" and getattr(adapter, "row_positions", False)
    inputs, outputs = decoder_contract("float32", allocation, row_positions)
    ids, mask = example_sources(spec)
    with torch.inference_mode():
        _, cross = adapter.encode(ids, mask)
        prefix = torch.full((2, 4), 5 % spec.vocab_size, dtype=torch.long)
        _, past = adapter.decode_step(prefix, mask, cross, adapter.empty_past(2))
    n = spec.num_layers
    # 3 new tokens after 4 past ones; a preallocated cache holds them in a 9-slot buffer
    head = (prefix[:, :3], mask, torch.tensor([1, 2]))
    component = DecoderComponent(adapter)
    if allocation == "preallocated":
        past, head = preallocate(past, 9), (*head, torch.arange(4, 7))
        component = PreallocatedDecoderComponent(adapter)
    if row_positions:  # row 1 is two steps behind row 0: its first two past slots are padding
        head = (*head, torch.tensor([[4, 5, 6], [2, 3, 4]]), torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]]))
        component = RowPositionedDecoderComponent(adapter)
    # clone: a tensor made under inference_mode cannot feed an embedding while torch.export traces
    cross, past = [t.clone() for t in flat_kv(cross)], [t.clone() for t in flat_kv(past)]
    args = (*(t.clone() for t in head), cross[:n], cross[n:], past[:n], past[n:])
    dyn = tuple(dynamic_axes(inputs[name]) for name in inputs if "{i}" not in name)
    dyn += tuple([dynamic_axes(inputs[name])] * n for name in inputs if "{i}" in name)
    path = folder / "decoder.onnx"
    with attention_mode(adapter, attention):
        export_component(component, args, dyn, inputs, outputs, n, path, TRANSLATIONS)
    return Component(file=path.name, sha256=sha256_of(path), inputs=inputs, outputs=outputs)


#: `seqport export --kv-cache` values: a manifest allocation, or "auto" (`resolve_allocation`).
KV_CACHE_CHOICES = ("auto", *KV_ALLOCATIONS)


def resolve_allocation(adapter, kv_cache: str, decoder_only: bool, attention: str) -> str:
    """`kv_cache` with "auto" resolved, then checked (`check_allocation`): "preallocated" for a
    decoder-only fused graph whose adapter writes at `cache_position`, "growing" otherwise.

    A growing cache copies the whole past into each step's present (O(n²) over a generation,
    issue #16: 28 vs 35 tokens/s after a 2048-token prompt); it is kept where it buys something,
    continuous batching, which a fused decoder-only artifact cannot do anyway (its rows are not
    merged, serving/continuous.py), and where no preallocated graph exists.
    """
    if kv_cache == "auto":
        writes_slots = "cache_position" in inspect.signature(adapter.decode_step).parameters
        kv_cache = "preallocated" if decoder_only and attention == "fused" and writes_slots else "growing"
    check_allocation(adapter, kv_cache)
    return kv_cache


def check_allocation(adapter, kv_cache: str) -> None:
    """A preallocated cache needs an adapter whose decode_step writes at `cache_position`."""
    if kv_cache not in KV_ALLOCATIONS:
        raise ExportError(f"kv_cache must be one of {', '.join(KV_ALLOCATIONS)}, got {kv_cache!r}")
    if kv_cache == "preallocated" and "cache_position" not in inspect.signature(adapter.decode_step).parameters:
        raise ExportError(
            f"{type(adapter).__name__}.decode_step takes no cache_position, so it cannot write into a "
            "preallocated cache; export with kv_cache='growing', or add the parameter "
            "(docs/own-model.md shows how with seqport.export.cache_slots.step_slots)"
        )
