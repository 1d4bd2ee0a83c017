"""Decoder-only export: the adapter protocol, the `decoder` graph's contract and wrapper, and
the attention pieces every causal family shares (left-padding mask, grouped-query attention).

One graph serves every step: past length 0 is the prefill of a (left-padded) prompt, past > 0
a generation step. Position ids are an input, derived by the caller from the mask
(cumsum(mask) - 1, clipped at 0), so a left-padded row computes exactly what the same prompt
computes alone (the bug behind huggingface/optimum#877 and #2326 cannot happen here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from seqport.engine.manifest import Component, TensorSpec, sha256_of
from seqport.export.adapter import KV, ModelSpec
from seqport.export.attention import TRANSLATIONS, attention_mode
from seqport.export.cache_slots import StepSlots, preallocate
from seqport.export.components import cache_dims, flat_kv
from seqport.export.hf_common import load_hf_model
from seqport.export.onnx_export import dynamic_axes, export_component

B, T, K = "batch_size", "sequence_length", "num_logits"


class DecoderOnlyAdapter(Protocol):
    """A causal language model split the way the engine runs it.

    Shapes: B batch, T new tokens, P past tokens, H_kv key/value heads, D head size,
    d model width, V vocabulary.
    """

    def spec(self) -> ModelSpec:
        """The model's canonical geometry and special ids (architecture "decoder-only")."""
        ...

    def decode_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[KV],
    ) -> tuple[torch.Tensor, list[KV]]:
        """ids (B, T), mask (B, P+T), positions (B, T) → hidden (B, T, d) after the final norm
        and present K/V (B, H_kv, P+T, D). Past length 0 must work: it is the prefill."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output projection: (B, K, d) → float32 (B, K, V)."""
        ...

    def empty_past(self, batch: int) -> list[KV]:
        """Zero-length past K/V (B, H_kv, 0, D) for every layer."""
        ...


def causal_contract(
    dtype: str, allocation: str = "growing"
) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """Logical → graph names, dtypes and named dims of the decoder-only `decoder` graph.

    With a preallocated cache the mask covers all C slots and `cache_position` (T,) says
    where the new tokens go (export/cache_slots.py).
    """
    kv = [B, "num_kv_heads"]
    past, present = cache_dims(allocation)
    inputs = {
        "input_ids": TensorSpec("input_ids", "int64", [B, T]),
        "attention_mask": TensorSpec("attention_mask", "int64", [B, present]),
        "position_ids": TensorSpec("position_ids", "int64", [B, T]),
        "logits_positions": TensorSpec("logits_positions", "int64", [K]),
    }
    if allocation == "preallocated":
        inputs["cache_position"] = TensorSpec("cache_position", "int64", [T])
    inputs["past_key.{i}"] = TensorSpec("past_key_values.{i}.key", dtype, kv + [past, "head_dim"])
    inputs["past_value.{i}"] = TensorSpec("past_key_values.{i}.value", dtype, kv + [past, "head_dim"])
    outputs = {
        "logits": TensorSpec("logits", "float32", [B, K, "vocab_size"]),
        "present_key.{i}": TensorSpec("present.{i}.key", dtype, kv + [present, "head_dim"]),
        "present_value.{i}": TensorSpec("present.{i}.value", dtype, kv + [present, "head_dim"]),
    }
    return inputs, outputs


class CausalDecoderComponent(nn.Module):
    """One step with past; `logits_positions` picks which new positions get logits ([T-1] to
    generate, arange(T) to score), so the vocabulary projection runs only where needed."""

    def __init__(self, adapter: DecoderOnlyAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        if isinstance(getattr(adapter, "model", None), nn.Module):
            self.model = adapter.model  # registers the weights so export sees parameters

    def forward(self, input_ids, attention_mask, position_ids, logits_positions, past_keys, past_values):
        past = list(zip(past_keys, past_values))
        hidden, present = self.adapter.decode_step(input_ids, attention_mask, position_ids, past)
        logits = self.adapter.logits(hidden.index_select(1, logits_positions))  # (B, K, V)
        return (logits.float(), *flat_kv(present))


class PreallocatedCausalDecoderComponent(CausalDecoderComponent):
    """CausalDecoderComponent over preallocated (B, H_kv, C, D) buffers written at `cache_position`."""

    def forward(
        self, input_ids, attention_mask, position_ids, logits_positions, cache_position, past_keys, past_values
    ):
        past = list(zip(past_keys, past_values))
        hidden, present = self.adapter.decode_step(
            input_ids, attention_mask, position_ids, past, cache_position=cache_position
        )
        logits = self.adapter.logits(hidden.index_select(1, logits_positions))  # (B, K, V)
        return (logits.float(), *flat_kv(present))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 (B, L) mask → (B, L) position ids: cumsum - 1, left pads clipped to 0 (as HF generate)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def attention_bias(
    attention_mask: torch.Tensor, slots: StepSlots, dtype: torch.dtype, window: int | None = None
) -> torch.Tensor:
    """Causal + padding (+ sliding window) mask as an additive bias (B, 1, T, L).

    L is P+T for a growing cache, C for a preallocated one (the mask then covers every slot).
    Query t sits at slot s_t; it sees slot j when j ≤ s_t, the mask holds 1 at j and, with a
    window, s_t - j < window (transformers' sliding_window_overlay). Blocked slots get
    finfo.min, not -inf: a left-pad query sees nothing, and a row of equal finite scores
    softmaxes to a finite uniform row instead of NaN (its output is never read by real tokens).
    """
    allowed = slots.allowed()  # (T, L)
    if window is not None:
        keys = torch.arange(slots.key_count, device=attention_mask.device)
        allowed = allowed & (slots.positions[:, None] - keys[None, :] < window)
    allowed = allowed[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, T, L)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, T, H*D) → (B, H, T, D)."""
    b, t, _ = x.shape
    return x.view(b, t, -1, head_dim).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scaling: float) -> torch.Tensor:
    """Eager softmax attention with grouped-query K/V, as transformers' eager_attention_forward.

    Args:
        q: (B, H, T, D); k, v: (B, H_kv, P+T, D) with H a multiple of H_kv; bias: (B, 1, T, P+T).

    Returns:
        (B, T, H*D), heads concatenated.
    """
    b, heads, t, d = q.shape
    groups = heads // k.shape[1]
    if groups > 1:  # each K/V head serves `groups` query heads: (B, H_kv, S, D) → (B, H, S, D)
        k = k[:, :, None].expand(-1, -1, groups, -1, -1).reshape(b, heads, -1, d)
        v = v[:, :, None].expand(-1, -1, groups, -1, -1).reshape(b, heads, -1, d)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling + bias  # (B, H, T, P+T)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v).transpose(1, 2).reshape(b, t, heads * d)  # (B, T, H*D)


def load_causal_lm(folder: Path, model_types: tuple[str, ...]):
    """A decoder-only folder (AutoModelForCausalLM) in float32, eval mode."""
    return load_hf_model(folder, model_types, "AutoModelForCausalLM")


def generation_defaults(generation_config: Any) -> dict[str, Any]:
    """A transformers GenerationConfig → manifest `generation` defaults (seqport field names).

    Only options the checkpoint sets are carried; sampling options only when it samples, with
    transformers' own fallback top_k=50 (transformers.GenerationConfig docs).
    """
    gc = generation_config
    out: dict[str, Any] = {}
    if getattr(gc, "max_new_tokens", None):
        out["max_new_tokens"] = int(gc.max_new_tokens)
    if getattr(gc, "do_sample", None):
        out["do_sample"] = True
        out["top_k"] = int(gc.top_k) if gc.top_k is not None else 50
        for name in ("temperature", "top_p", "min_p"):
            if getattr(gc, name, None) is not None:
                out[name] = float(getattr(gc, name))
    for name, neutral in (("num_beams", 1), ("repetition_penalty", 1.0), ("no_repeat_ngram_size", 0)):
        value = getattr(gc, name, None)
        if value is not None and value != neutral:
            out[name] = value
    for name in ("forced_bos_token_id", "forced_eos_token_id"):
        if getattr(gc, name, None) is not None:
            out[name] = getattr(gc, name)
    if out.get("num_beams", 1) > 1:
        for name in ("length_penalty", "early_stopping"):
            if getattr(gc, name, None) is not None:
                out[name] = getattr(gc, name)
    return out


def eos_ids(*values: int | list[int] | None) -> list[int]:
    """The first non-empty of several eos settings (int or list), as a list of ids."""
    for value in values:
        if value is not None and value != []:
            return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return []


def export_decoder_only(
    adapter: DecoderOnlyAdapter,
    spec: ModelSpec,
    folder: Path,
    allocation: str = "growing",
    attention: str = "portable",
) -> Component:
    """Export the `decoder` graph of a decoder-only model to `folder/decoder.onnx`, its
    self-attention "portable" (plain ONNX) or "fused" (export/attention.py; checked beforehand
    with check_attention).

    Example sizes are ≥ 2 and distinct on every dynamic axis (torch.export specialises 0 and
    1); validation then proves that batch 1 and past 0 work. The example prompt is left-padded.

    Raises:
        ExportError: torch.onnx could not export the graph.
    """
    inputs, outputs = causal_contract("float32", allocation)
    low = max(spec.eos + [spec.pad or 0, spec.bos or 0]) + 1
    ids = (torch.arange(7, dtype=torch.long).repeat(2, 1) + low) % spec.vocab_size  # (2, 7)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # row 1 is left-padded
    positions = positions_from_mask(mask)
    with torch.inference_mode():
        _, past = adapter.decode_step(ids[:, :4], mask[:, :4], positions[:, :4], adapter.empty_past(2))
    n = spec.num_layers
    head = (ids[:, 4:], mask, positions[:, 4:], torch.tensor([1, 2]))
    component = CausalDecoderComponent(adapter)
    if allocation == "preallocated":  # 3 new tokens at slots 4..6 of a 9-slot buffer
        past = preallocate(past, 9)
        head = (ids[:, 4:], torch.nn.functional.pad(mask, (0, 2)), positions[:, 4:], torch.tensor([1, 2]))
        head += (torch.arange(4, 7),)
        component = PreallocatedCausalDecoderComponent(adapter)
    past = [t.clone() for t in flat_kv(past)]  # inference tensors cannot be export inputs
    args = (*head, past[:n], past[n:])
    dyn = tuple(dynamic_axes(inputs[name]) for name in inputs if "{i}" not in name)
    dyn += ([dynamic_axes(inputs["past_key.{i}"])] * n, [dynamic_axes(inputs["past_value.{i}"])] * n)
    path = folder / "decoder.onnx"
    with attention_mode(adapter, attention):
        export_component(component, args, dyn, inputs, outputs, n, path, TRANSLATIONS)
    return Component(file=path.name, sha256=sha256_of(path), inputs=inputs, outputs=outputs)
