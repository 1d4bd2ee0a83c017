"""Adapter for BART and mBART checkpoints; Marian (marian.py) reuses it.

Mirrors transformers' modeling_bart.py / modeling_mbart.py with the loaded modules' weights:
learned positions at offset 2, scaled token embeddings when scale_embedding, layernorm_embedding,
post-norm layers (BART) or pre-norm layers with a final layer norm per stack (mBART), and a tied
lm_head plus final_logits_bias.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from seqport.export.adapter import KV, ModelSpec, tied_projection
from seqport.export.attention_seq2seq import fused_attention, fused_self_attention
from seqport.export.cache_slots import step_slots
from seqport.export.hf_common import (
    attend,
    generation_defaults,
    load_seq2seq,
    padding_bias,
    special_ids,
    split_heads,
    write_tokenizer,
)

#: model_type -> whether its layers normalise before (True) or after (False) each sublayer.
PRE_NORM = {"bart": False, "mbart": True}


class BartAdapter:
    """A loaded BART-style ForConditionalGeneration split into encode and decode_step.

    Shapes: B batch, S source, T new, P past, H heads, D head size, d d_model, V vocabulary.
    """

    row_positions = True  # decode_step takes position_ids and attention_mask (export adds them)

    def __init__(self, model, folder: Path, pre_norm: bool) -> None:
        self.model, self.folder, self.pre_norm = model, folder, pre_norm
        self.core = model.model  # BartModel / MBartModel / MarianModel
        cfg = model.config
        self.num_heads = cfg.decoder_attention_heads
        self.head_dim = cfg.d_model // cfg.decoder_attention_heads
        #: "portable" or "fused" (export/attention_seq2seq.py); the exporter sets it while it traces.
        self.attention = "portable"

    def spec(self) -> ModelSpec:
        cfg = self.model.config
        ids = special_ids(self.model)
        return ModelSpec(
            family=cfg.model_type,
            vocab_size=self.model.lm_head.out_features,
            max_positions=cfg.max_position_embeddings,
            num_layers=cfg.decoder_layers,
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
        stack = self.core.encoder
        x = self._embed(stack, input_ids, torch.arange(input_ids.shape[1]))  # (B, S, d)
        bias = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, S)
        for layer in stack.layers:
            x = self._sublayer(
                x, layer.self_attn_layer_norm, lambda h, a=layer.self_attn: self._attend_self(a, h, bias)
            )
            x = self._sublayer(x, layer.final_layer_norm, lambda h, f=layer: _feed_forward(f, h))
        x = _final_norm(stack, x)
        cross = [self._project_kv(layer.encoder_attn, x) for layer in self.core.decoder.layers]
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
        `position_ids` (B, T) and `attention_mask` (B, P+T) each row has its own positions and
        masked past slots (continuous batching; see `row_positions`)."""
        stack = self.core.decoder
        slots = step_slots(past[0], input_ids.shape[1], cache_position)
        x = self._embed(stack, input_ids, slots.positions if position_ids is None else position_ids)  # (B, T, d)
        self_bias = slots.causal_bias(x.dtype)  # (T, P+T or C)
        if attention_mask is not None:
            padding = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, P+T)
            self_bias = (self_bias + padding).clamp(min=torch.finfo(x.dtype).min)  # (B, 1, T, P+T)
        cross_bias = padding_bias(encoder_attention_mask, x.dtype)  # (B, 1, 1, S)
        present: list[KV] = []
        for layer, layer_past, layer_cross in zip(stack.layers, past, cross):

            def self_attention(h, layer=layer, layer_past=layer_past):
                if self.attention == "fused":
                    return self._fused_step(layer.self_attn, h, layer_past, slots, self_bias, present)
                k, v = slots.extend(layer_past, self._project_kv(layer.self_attn, h))  # (B, H, P+T or C, D)
                present.append((k, v))
                return self._attend(layer.self_attn, h, k, v, self_bias)

            def cross_attention(h, layer=layer, layer_cross=layer_cross):
                return self._attend(layer.encoder_attn, h, *layer_cross, cross_bias)

            x = self._sublayer(x, layer.self_attn_layer_norm, self_attention)
            x = self._sublayer(x, layer.encoder_attn_layer_norm, cross_attention)
            x = self._sublayer(x, layer.final_layer_norm, lambda h, f=layer: _feed_forward(f, h))
        return _final_norm(stack, x), present

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, K, d) → float32 (B, K, V): tied lm_head plus final_logits_bias (1, V)."""
        return tied_projection(hidden, self.model.lm_head.weight) + self.model.final_logits_bias

    def empty_past(self, batch: int) -> list[KV]:
        empty = torch.zeros(batch, self.num_heads, 0, self.head_dim)
        return [(empty, empty) for _ in range(self.model.config.decoder_layers)]

    def _embed(self, stack, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embedding (scaled) + position embedding at int64 positions (T,) or (B, T) (+ layernorm_embedding)."""
        tokens = stack.embed_tokens
        # BART/mBART scale inside the embedding module; Marian's stack holds the scale instead.
        scale = 1.0 if hasattr(tokens, "embed_scale") else getattr(stack, "embed_scale", 1.0)
        table = stack.embed_positions
        x = tokens(input_ids) * scale + F.embedding(positions + getattr(table, "offset", 0), table.weight)  # (B, T, d)
        norm = getattr(stack, "layernorm_embedding", None)
        return norm(x) if norm is not None else x

    def _sublayer(self, x: torch.Tensor, norm, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + fn(norm(x))
        return norm(x + fn(x))

    def _project_kv(self, attention, x: torch.Tensor) -> KV:
        # heads from the module: the encoder may have another head count than the decoder
        return (
            split_heads(attention.k_proj(x), attention.num_heads, attention.head_dim),
            split_heads(attention.v_proj(x), attention.num_heads, attention.head_dim),
        )

    def _attend(self, attention, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias) -> torch.Tensor:
        if self.attention == "fused":  # k, v: projected (B, S, d) or cross K/V (B, H, S, D)
            out = fused_attention(attention.q_proj(h), k, v, bias, attention.num_heads, attention.scaling)
            return attention.out_proj(out)
        q = split_heads(attention.q_proj(h), attention.num_heads, attention.head_dim)  # (B, H, T, D)
        return attention.out_proj(attend(q, k, v, bias, attention.scaling))

    def _attend_self(self, attention, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.attention == "fused":  # key/value as projected: no transposes
            return self._attend(attention, h, attention.k_proj(h), attention.v_proj(h), bias)
        return self._attend(attention, h, *self._project_kv(attention, h), bias)

    def _fused_step(self, attention, h: torch.Tensor, past: KV, slots, bias, present: list[KV]) -> torch.Tensor:
        """The decoder's self-attention as one MultiHeadAttention over the cache; appends present K/V."""
        q, k, v = attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)  # (B, T, d)
        out, kv = fused_self_attention(q, k, v, past, slots, bias, attention.num_heads, attention.scaling)
        present.append(kv)
        return attention.out_proj(out)


def _feed_forward(layer, h: torch.Tensor) -> torch.Tensor:
    return layer.fc2(layer.activation_fn(layer.fc1(h)))


def _final_norm(stack, x: torch.Tensor) -> torch.Tensor:
    norm = getattr(stack, "layer_norm", None)  # mBART's pre-norm stacks end with one
    return norm(x) if norm is not None else x


def load(folder: Path) -> BartAdapter:
    model = load_seq2seq(folder, tuple(PRE_NORM))
    return BartAdapter(model, folder, PRE_NORM[model.config.model_type])
