"""nn.Module wrappers that turn an adapter into the flat-tensor signatures of the ONNX graphs.

Each wrapper also declares its contract: logical name → graph name, dtype and named dims.
Graph names follow the optimum convention (STYLE.md §5) so other tools can read the files.
"""

from __future__ import annotations

import torch
from torch import nn

from seqport.engine.manifest import TensorSpec
from seqport.export.adapter import KV, EncoderDecoderAdapter

B, S, T, P, K = (
    "batch_size",
    "encoder_sequence_length",
    "sequence_length",
    "past_sequence_length",
    "num_logits",
)
PT = "past_sequence_length + sequence_length"
C = "cache_length"  # slots of a preallocated self-attention cache


def _pairs(keys: list[torch.Tensor], values: list[torch.Tensor]) -> list[KV]:
    return list(zip(keys, values))


def flat_kv(pairs: list[KV]) -> list[torch.Tensor]:
    """All keys, then all values: the order in which the contract's "{i}" templates expand."""
    return [k for k, _ in pairs] + [v for _, v in pairs]


def encoder_contract(dtype: str) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    inputs = {
        "input_ids": TensorSpec("input_ids", "int64", [B, S]),
        "attention_mask": TensorSpec("attention_mask", "int64", [B, S]),
    }
    outputs = {
        "encoder_hidden_states": TensorSpec("encoder_hidden_states", dtype, [B, S, "d_model"]),
        "cross_key.{i}": TensorSpec("present.{i}.encoder.key", dtype, [B, "num_kv_heads", S, "head_dim"]),
        "cross_value.{i}": TensorSpec("present.{i}.encoder.value", dtype, [B, "num_kv_heads", S, "head_dim"]),
    }
    return inputs, outputs


def cache_dims(allocation: str) -> tuple[str, str]:
    """Named slot dims of past and present self-attention K/V for a cache allocation."""
    return (C, C) if allocation == "preallocated" else (P, PT)


def decoder_contract(
    dtype: str, allocation: str = "growing", row_positions: bool = False
) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """The encoder-decoder `decoder` step; a preallocated cache adds `cache_position` (T,),
    `row_positions` adds position_ids (B, T) and the self-attention attention_mask (B, P+T)
    (rows at different steps in one call: continuous batching)."""
    kv = [B, "num_kv_heads"]
    past, present = cache_dims(allocation)
    inputs = {
        "input_ids": TensorSpec("input_ids", "int64", [B, T]),
        "encoder_attention_mask": TensorSpec("encoder_attention_mask", "int64", [B, S]),
        "logits_positions": TensorSpec("logits_positions", "int64", [K]),
    }
    if allocation == "preallocated":
        inputs["cache_position"] = TensorSpec("cache_position", "int64", [T])
    if row_positions:
        inputs["position_ids"] = TensorSpec("decoder_position_ids", "int64", [B, T])
        inputs["attention_mask"] = TensorSpec("decoder_attention_mask", "int64", [B, present])
    inputs.update(
        {
            "cross_key.{i}": TensorSpec("past_key_values.{i}.encoder.key", dtype, kv + [S, "head_dim"]),
            "cross_value.{i}": TensorSpec("past_key_values.{i}.encoder.value", dtype, kv + [S, "head_dim"]),
            "past_key.{i}": TensorSpec("past_key_values.{i}.decoder.key", dtype, kv + [past, "head_dim"]),
            "past_value.{i}": TensorSpec("past_key_values.{i}.decoder.value", dtype, kv + [past, "head_dim"]),
        }
    )
    outputs = {
        "logits": TensorSpec("logits", "float32", [B, K, "vocab_size"]),
        "present_key.{i}": TensorSpec("present.{i}.decoder.key", dtype, kv + [present, "head_dim"]),
        "present_value.{i}": TensorSpec("present.{i}.decoder.value", dtype, kv + [present, "head_dim"]),
    }
    return inputs, outputs


class EncoderComponent(nn.Module):
    """(input_ids, attention_mask) → (encoder_hidden_states, cross K/V of every layer)."""

    def __init__(self, adapter: EncoderDecoderAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        if isinstance(getattr(adapter, "model", None), nn.Module):
            self.model = adapter.model  # registers the weights so export sees parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden, cross = self.adapter.encode(input_ids, attention_mask)
        return (hidden, *flat_kv(cross))


class DecoderComponent(nn.Module):
    """One decoder step with past; `logits_positions` picks which new positions get logits.

    Generation asks for the last position only ([T-1]) so the vocabulary projection runs once
    per row, scoring asks for all of them (arange(T)): one graph, no If node, one weight copy.
    """

    def __init__(self, adapter: EncoderDecoderAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        if isinstance(getattr(adapter, "model", None), nn.Module):
            self.model = adapter.model

    def forward(
        self,
        input_ids,
        encoder_attention_mask,
        logits_positions,
        cross_keys,
        cross_values,
        past_keys,
        past_values,
    ):
        cross, past = _pairs(cross_keys, cross_values), _pairs(past_keys, past_values)
        hidden, present = self.adapter.decode_step(input_ids, encoder_attention_mask, cross, past)
        logits = self.adapter.logits(hidden.index_select(1, logits_positions))  # (B, K, V)
        return (logits.float(), *flat_kv(present))


class PreallocatedDecoderComponent(DecoderComponent):
    """DecoderComponent over a preallocated cache: past K/V are (B, H_kv, C, D) buffers, the new
    tokens' K/V are written at `cache_position` (T,) and the buffers come back as present."""

    def forward(
        self,
        input_ids,
        encoder_attention_mask,
        logits_positions,
        cache_position,
        cross_keys,
        cross_values,
        past_keys,
        past_values,
    ):
        cross, past = _pairs(cross_keys, cross_values), _pairs(past_keys, past_values)
        hidden, present = self.adapter.decode_step(
            input_ids, encoder_attention_mask, cross, past, cache_position=cache_position
        )
        logits = self.adapter.logits(hidden.index_select(1, logits_positions))  # (B, K, V)
        return (logits.float(), *flat_kv(present))


class RowPositionedDecoderComponent(DecoderComponent):
    """DecoderComponent whose rows carry their own position_ids (B, T) and self-attention
    attention_mask (B, P+T): rows at different steps, left-padded in the past, share one call."""

    def forward(
        self,
        input_ids,
        encoder_attention_mask,
        logits_positions,
        position_ids,
        attention_mask,
        cross_keys,
        cross_values,
        past_keys,
        past_values,
    ):
        cross, past = _pairs(cross_keys, cross_values), _pairs(past_keys, past_values)
        hidden, present = self.adapter.decode_step(
            input_ids, encoder_attention_mask, cross, past, position_ids=position_ids, attention_mask=attention_mask
        )
        logits = self.adapter.logits(hidden.index_select(1, logits_positions))  # (B, K, V)
        return (logits.float(), *flat_kv(present))
