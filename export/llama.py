"""Llama-family decoders: Llama, Mistral and Qwen2 (RMSNorm, RoPE, grouped-query attention).

The three differ only in their config: Qwen2 has QKV biases (its q/k/v_proj carry them),
Mistral a sliding window on every layer, Qwen2 on the layers its `layer_types` name. The
adapter drives the HF modules' weights directly (transformers models/llama/modeling_llama.py
LlamaDecoderLayer.forward, without the Cache object) so torch.export sees plain tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from seqport.engine.errors import ExportError
from seqport.export.adapter import KV, ModelSpec, tied_projection
from seqport.export.attention import attention_lengths, fused_attention, rotary_embedding, rotary_in_attention
from seqport.export.cache_slots import step_slots
from seqport.export.causal import attend, attention_bias, eos_ids, generation_defaults, load_causal_lm, split_heads
from seqport.export.contrib_ops import skip_rms_norm
from seqport.export.hf_common import rms_norm

ARCHITECTURE = "decoder-only"
MODEL_TYPES = ("llama", "mistral", "qwen2")
#: RoPE variants whose frequencies do not depend on the sequence length, so one graph fits all.
STATIC_ROPE = ("default", "linear", "llama3", "yarn", "proportional")


def _windows(config) -> list[int | None]:
    """Sliding window per layer (None = full attention), normalised once per family."""
    layers = config.num_hidden_layers
    if config.model_type == "mistral":
        return [config.sliding_window] * layers
    if config.model_type == "qwen2":
        kinds = config.layer_types or ["full_attention"] * layers
        return [config.sliding_window if kind == "sliding_attention" else None for kind in kinds]
    return [None] * layers


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAdapter:
    """Decoder-only adapter over a Llama/Mistral/Qwen2 ForCausalLM (see export/causal.py)."""

    def __init__(self, model) -> None:
        self.model = model.eval()
        self.config = config = model.config
        rope = model.model.rotary_emb
        if rope.rope_type not in STATIC_ROPE:
            raise ExportError(
                f"rope_type {rope.rope_type!r} changes with the sequence length and is not supported; "
                f"supported rope types are: {', '.join(STATIC_ROPE)}"
            )
        self.head_dim = model.model.layers[0].self_attn.head_dim
        self.windows = _windows(config)
        #: "portable" or "fused" (export/attention.py); the exporter sets it while it traces.
        self.attention = "portable"
        self._rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def spec(self) -> ModelSpec:
        c, gc = self.config, self.model.generation_config
        eos = eos_ids(gc.eos_token_id, c.eos_token_id)
        pad = gc.pad_token_id if gc.pad_token_id is not None else c.pad_token_id
        return ModelSpec(
            family=c.model_type,
            vocab_size=c.vocab_size,
            max_positions=c.max_position_embeddings,
            num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads,
            num_kv_heads=c.num_key_value_heads,
            head_dim=self.head_dim,
            eos=eos,
            pad=pad if pad is not None else (eos[0] if eos else None),  # no pad: batch with eos
            bos=gc.bos_token_id if gc.bos_token_id is not None else c.bos_token_id,
            architecture=ARCHITECTURE,
            generation=generation_defaults(gc),
        )

    def rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) positions → cos, sin (B, 1, T, D), as LlamaRotaryEmbedding.forward."""
        rope = self.model.model.rotary_emb
        freqs = position_ids[..., None].float() * rope.inv_freq.float()  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return (emb.cos() * rope.attention_scaling)[:, None], (emb.sin() * rope.attention_scaling)[:, None]

    def decode_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[KV],
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        body = self.model.model
        slots = step_slots(past[0], input_ids.shape[1], cache_position)
        x = body.embed_tokens(input_ids)  # (B, T, d)
        biases = {w: attention_bias(attention_mask, slots, x.dtype, w) for w in set(self.windows)}
        if self.attention == "fused":
            return self._fused_layers(x, position_ids, past, biases, slots)
        cos, sin = self.rotary(position_ids)
        present = []
        for layer, window, (past_k, past_v) in zip(body.layers, self.windows, past):
            attn, h = layer.self_attn, rms_norm(layer.input_layernorm, x)
            q, k, v = (split_heads(proj(h), self.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin  # (B, H|H_kv, T, D)
            k, v = slots.extend((past_k, past_v), (k, v))  # (B, H_kv, P+T or C, D)
            out = attend(q, k, v, biases[window], attn.scaling)  # (B, T, H*D)
            present.append((k, v))
            x = x + attn.o_proj(out)
            x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
        return rms_norm(body.norm, x), present

    def _fused_layers(self, x, position_ids, past: list[KV], biases: dict, slots) -> tuple[torch.Tensor, list[KV]]:
        """The fused graph's layers, laid out as onnxruntime-genai's builder does: one packed QKV
        MatMul and one GroupQueryAttention (rotating Q and K itself) per layer, the residual adds
        inside SkipSimplifiedLayerNormalization, the attention lengths computed once."""
        body, heads = self.model.model, (self.config.num_attention_heads, self.config.num_key_value_heads)
        lengths = attention_lengths(x, past[0][0], slots.cache_position)
        h, present = rms_norm(body.layers[0].input_layernorm, x), []
        next_norms = [layer.input_layernorm for layer in body.layers[1:]] + [body.norm]
        for i, (layer, window, next_norm) in enumerate(zip(body.layers, self.windows, next_norms)):
            attn = layer.self_attn
            qkv, rope = self._packed_qkv(i, h, position_ids)
            out, k, v = fused_attention(
                qkv, past[i], lengths, biases[window], rope, slots.cache_position, heads, attn.scaling
            )  # fmt: skip
            present.append((k, v))
            h, x = _skip_norm(attn.o_proj(out), x, layer.post_attention_layernorm)  # x: the new residual
            h, x = _skip_norm(layer.mlp(h), x, next_norm)
        return h, present

    def _packed_qkv(self, i: int, h: torch.Tensor, position_ids: torch.Tensor) -> tuple[tuple, tuple | None]:
        """Layer i's Q|K|V from one MatMul (B, T, (H + 2·H_kv)·D): packed for the node to rotate,
        or split and rotated by RotaryEmbedding nodes where the node cannot (head size)."""
        qkv, tables = self.model.seqport_packed_qkv[i](h), self.rope_tables()
        if rotary_in_attention(self.head_dim):
            return (qkv, None, None), (position_ids, *tables)
        kv_width = self.config.num_key_value_heads * self.head_dim
        q, k, v = qkv.split([qkv.shape[-1] - 2 * kv_width, kv_width, kv_width], dim=-1)
        return (rotary_embedding(q, position_ids, *tables), rotary_embedding(k, position_ids, *tables), v), None

    @contextlib.contextmanager
    def fused_weights(self) -> Iterator[None]:
        """While the fused graph is traced: each layer's q/k/v projections as one packed Linear
        (`seqport_packed_qkv`, registered on the model so the exporter writes one weight)."""
        packed = torch.nn.ModuleList(_pack(layer.self_attn) for layer in self.model.model.layers)
        self.model.add_module("seqport_packed_qkv", packed)
        try:
            yield
        finally:
            del self.model.seqport_packed_qkv

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (max_positions, D/2) for every position, as `rotary` computes them."""
        if self._rope_tables is None:
            rope = self.model.model.rotary_emb
            positions = torch.arange(self.config.max_position_embeddings)[:, None].float()  # (L, 1)
            freqs = positions * rope.inv_freq.float()  # (L, D/2)
            self._rope_tables = (freqs.cos() * rope.attention_scaling, freqs.sin() * rope.attention_scaling)
        return self._rope_tables

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return tied_projection(hidden, self.model.lm_head.weight).float()  # (B, K, V)

    def empty_past(self, batch: int) -> list[KV]:
        zero = torch.zeros(batch, self.config.num_key_value_heads, 0, self.head_dim)  # (B, H_kv, 0, D)
        return [(zero, zero)] * self.config.num_hidden_layers


def _pack(attn) -> torch.nn.Linear:
    """q_proj, k_proj, v_proj (biases too: Qwen2) → one Linear d → (H + 2·H_kv)·D."""
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    weight = torch.cat([p.weight for p in projections])  # ((H + 2·H_kv)·D, d)
    packed = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=attn.q_proj.bias is not None)
    with torch.no_grad():
        packed.weight.copy_(weight)
        if packed.bias is not None:
            packed.bias.copy_(torch.cat([p.bias for p in projections]))
    return packed


def _skip_norm(delta: torch.Tensor, residual: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(residual + delta), residual + delta): one SkipSimplifiedLayerNormalization."""
    return skip_rms_norm(delta, residual, norm.weight, norm.variance_epsilon)


def load(folder: Path) -> LlamaAdapter:
    return LlamaAdapter(load_causal_lm(folder, MODEL_TYPES))
