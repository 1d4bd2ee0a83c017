"""Adapter for T5, T5 v1.1 / flan-T5 (gated-GELU, untied lm_head) and mT5 checkpoints.

Mirrors transformers' modeling_t5.py with the loaded modules' weights: no position embeddings
but a learned relative position bias computed once by the first layer of each stack and shared
by all its layers, RMS-style T5LayerNorm, unscaled attention (the 1/sqrt(d) is folded into the
weights), pre-norm residual blocks and a final norm per stack.
"""

from __future__ import annotations

from pathlib import Path

import torch

from seqport.export.adapter import KV, ModelSpec, tied_projection
from seqport.export.attention_seq2seq import fused_attention, fused_self_attention
from seqport.export.cache_slots import StepSlots, step_slots
from seqport.export.hf_common import (
    attend,
    generation_defaults,
    load_seq2seq,
    padding_bias,
    rms_norm,
    special_ids,
    split_heads,
    write_tokenizer,
)

MODEL_TYPES = ("t5", "mt5")


class T5Adapter:
    """A loaded T5ForConditionalGeneration / MT5ForConditionalGeneration split into encode and
    decode_step. Shapes: B batch, S source, T new, P past, H heads, D d_kv, d d_model, V vocab."""

    row_positions = True  # decode_step takes position_ids and attention_mask (export adds them)

    def __init__(self, model, folder: Path) -> None:
        self.model, self.folder = model, folder
        cfg = model.config
        self.num_heads, self.head_dim = cfg.num_heads, cfg.d_kv
        self.output_scale = cfg.d_model**-0.5 if _scales_output(cfg) else 1.0
        #: "portable" or "fused" (export/attention_seq2seq.py); the exporter sets it while it traces.
        self.attention = "portable"

    def spec(self) -> ModelSpec:
        cfg = self.model.config
        ids = special_ids(self.model)
        return ModelSpec(
            family=cfg.model_type,
            vocab_size=self.model.lm_head.out_features,
            max_positions=int(getattr(cfg, "n_positions", None) or 512),  # relative positions: no hard limit
            num_layers=cfg.num_decoder_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_heads,
            head_dim=self.head_dim,
            eos=ids["eos"],
            pad=ids["pad"],
            bos=ids["bos"],
            decoder_start=ids["decoder_start"],
            generation=generation_defaults(self.model),
        )

    def write_tokenizer(self, out: Path) -> str:
        return write_tokenizer(self.folder, out)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[KV]]:
        """int64 (B, S) ids and mask → hidden (B, S, d) and cross K/V (B, H, S, D) per decoder layer."""
        stack = self.model.encoder
        x = stack.embed_tokens(input_ids)  # (B, S, d)
        s = input_ids.shape[1]
        first = stack.block[0].layer[0].SelfAttention
        bias = self._position_bias(first, torch.arange(s), s) + padding_bias(attention_mask, x.dtype)  # (B, H, S, S)
        for block in stack.block:
            x = self._self_attention(block.layer[0], x, bias)[0]
            x = _feed_forward(block.layer[-1], x)
        x = rms_norm(stack.final_layer_norm, x)
        cross = [self._project_kv(block.layer[1].EncDecAttention, x) for block in self.model.decoder.block]
        return x, cross

    def decode_step(
        self,
        input_ids: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        cross: list[KV],
        past: list[KV],
        cache_position: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """New ids (B, T) after P past tokens → hidden (B, T, d) and present K/V (B, H, P+T, D),
        or, with `cache_position`, written into the preallocated (B, H, C, D) past. With
        `position_ids` (B, T) and `attention_mask` (B, P+T) each row has its own positions (the
        relative bias is computed from them) and masked past slots (continuous batching)."""
        stack = self.model.decoder
        slots = step_slots(past[0], input_ids.shape[1], cache_position)
        x = stack.embed_tokens(input_ids)  # (B, T, d)
        first = stack.block[0].layer[0].SelfAttention
        if position_ids is None:
            self_bias = self._position_bias(first, slots.positions, slots.key_count) + slots.causal_bias(x.dtype)
        else:
            keys = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+T): each slot's position in its row
            relative = keys[:, None, :] - position_ids[:, :, None]  # (B, T, P+T)
            padding = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, P+T)
            masks = (slots.causal_bias(x.dtype) + padding).clamp(min=torch.finfo(x.dtype).min)
            self_bias = self._relative_bias(first, relative).permute(0, 3, 1, 2) + masks  # (B, H, T, P+T)
        cross_bias = padding_bias(encoder_attention_mask, x.dtype)  # (B, 1, 1, S)
        present = []
        for block, layer_past, (cross_k, cross_v) in zip(stack.block, past, cross):
            x, kv = self._self_attention(block.layer[0], x, self_bias, slots, layer_past)
            present.append(kv)
            x = self._cross_attention(block.layer[1], x, cross_k, cross_v, cross_bias)
            x = _feed_forward(block.layer[2], x)
        return rms_norm(stack.final_layer_norm, x), present

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, K, d) → float32 (B, K, V); T5 with a tied lm_head rescales by d_model**-0.5 first."""
        return tied_projection(hidden * self.output_scale, self.model.lm_head.weight)

    def empty_past(self, batch: int) -> list[KV]:
        empty = torch.zeros(batch, self.num_heads, 0, self.head_dim)
        return [(empty, empty) for _ in range(self.model.config.num_decoder_layers)]

    def _project_kv(self, attention, x: torch.Tensor) -> KV:
        return (
            split_heads(attention.k(x), self.num_heads, self.head_dim),
            split_heads(attention.v(x), self.num_heads, self.head_dim),
        )

    def _cross_attention(self, sub, x: torch.Tensor, cross_k, cross_v, bias: torch.Tensor) -> torch.Tensor:
        """Pre-norm cross-attention block over the encoder's K/V (B, H, S, D), unscaled."""
        attention, h = sub.EncDecAttention, rms_norm(sub.layer_norm, x)
        if self.attention == "fused":
            return x + attention.o(fused_attention(attention.q(h), cross_k, cross_v, bias, self.num_heads, 1.0))
        q = split_heads(attention.q(h), self.num_heads, self.head_dim)
        return x + attention.o(attend(q, cross_k, cross_v, bias, 1.0))

    def _self_attention(
        self, sub, x: torch.Tensor, bias: torch.Tensor, slots: StepSlots | None = None, past: KV | None = None
    ):
        """Pre-norm self-attention block; returns the residual output and this step's K/V."""
        attention = sub.SelfAttention
        h = rms_norm(sub.layer_norm, x)
        if self.attention == "fused":  # the relative position bias rides in the node's attention_bias
            return self._fused_self_attention(attention, x, h, bias, slots, past)
        k, v = self._project_kv(attention, h)
        if slots is not None and past is not None:
            k, v = slots.extend(past, (k, v))  # (B, H, P+T or C, D)
        q = split_heads(attention.q(h), self.num_heads, self.head_dim)
        return x + attention.o(attend(q, k, v, bias, 1.0)), (k, v)

    def _fused_self_attention(self, attention, x, h, bias, slots: StepSlots | None, past: KV | None):
        """`_self_attention` as one MultiHeadAttention node: over the cache (decoder) or not (encoder)."""
        q, k, v = attention.q(h), attention.k(h), attention.v(h)  # (B, T, H*D)
        if slots is None or past is None:
            return x + attention.o(fused_attention(q, k, v, bias, self.num_heads, 1.0)), None
        out, kv = fused_self_attention(q, k, v, past, slots, bias, self.num_heads, 1.0)
        return x + attention.o(out), kv

    def _position_bias(self, attention, queries: torch.Tensor, key_len) -> torch.Tensor:
        """Learned relative position bias (1, H, T, K) for queries at positions (T,) against keys 0..K-1.

        The decoder's buckets are one-directional (only keys at or before the query count), the
        encoder's bidirectional, as in T5Attention.compute_bias.
        """
        keys = torch.arange(key_len)[None, :]  # (1, K)
        return self._relative_bias(attention, keys - queries[:, None]).permute(2, 0, 1).unsqueeze(0)  # (1, H, T, K)

    def _relative_bias(self, attention, relative: torch.Tensor) -> torch.Tensor:
        """int64 key - query distances (..., T, K) → learned bias (..., T, K, H)."""
        cfg = self.model.config
        buckets = attention._relative_position_bucket(
            relative,
            bidirectional=not attention.is_decoder,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
        )  # (..., T, K)
        return attention.relative_attention_bias(buckets)


def _feed_forward(sub, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm FFN block: ReLU (T5) or gated GELU (v1.1, mT5: act(wi_0 h) * wi_1 h)."""
    ff, h = sub.DenseReluDense, rms_norm(sub.layer_norm, x)
    inner = ff.act(ff.wi_0(h)) * ff.wi_1(h) if hasattr(ff, "wi_0") else ff.act(ff.wi(h))
    return x + ff.wo(inner)


def _scales_output(cfg) -> bool:
    """Whether the decoder output is multiplied by d_model**-0.5 before lm_head.

    transformers >= 5 keeps T5's rule in config.scale_decoder_outputs (original T5: yes, v1.1 with
    tie_word_embeddings=false: no) and never scales mT5; version 4 scaled whenever the
    embeddings were tied.
    """
    explicit = getattr(cfg, "scale_decoder_outputs", None)
    if explicit is not None:
        return bool(explicit)
    import transformers

    if cfg.model_type == "mt5" and int(transformers.__version__.split(".")[0]) >= 5:
        return False
    return bool(getattr(cfg, "tie_word_embeddings", True))


def load(folder: Path) -> T5Adapter:
    return T5Adapter(load_seq2seq(folder, MODEL_TYPES), folder)
