"""Llama-family decoders: Llama, Mistral and Qwen2 (RMSNorm, RoPE, grouped-query attention).

The three differ only in their config: Qwen2 has QKV biases (its q/k/v_proj carry them),
Mistral a sliding window on every layer, Qwen2 on the layers its `layer_types` name. The
adapter drives the HF modules' weights directly (transformers models/llama/modeling_llama.py
LlamaDecoderLayer.forward, without the Cache object) so torch.export sees plain tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from seqport.engine.errors import ExportError
from seqport.export.adapter import KV, ModelSpec, tied_projection
from seqport.export.attention import fused_attention, rotary_embedding
from seqport.export.cache_slots import step_slots
from seqport.export.causal import attend, attention_bias, eos_ids, generation_defaults, load_causal_lm, split_heads
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
        cos, sin = self.rotary(position_ids)
        biases = {w: attention_bias(attention_mask, slots, x.dtype, w) for w in set(self.windows)}
        present = []
        for layer, window, (past_k, past_v) in zip(body.layers, self.windows, past):
            attn, h = layer.self_attn, rms_norm(layer.input_layernorm, x)
            if self.attention == "fused":
                out, k, v = self._fused_attention(attn, h, position_ids, (past_k, past_v), biases[window], slots)
            else:
                q, k, v = (split_heads(proj(h), self.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin  # (B, H|H_kv, T, D)
                k, v = slots.extend((past_k, past_v), (k, v))  # (B, H_kv, P+T or C, D)
                out = attend(q, k, v, biases[window], attn.scaling)  # (B, T, H*D)
            present.append((k, v))
            x = x + attn.o_proj(out)
            x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
        return rms_norm(body.norm, x), present

    def _fused_attention(self, attn, h, position_ids, past: KV, bias, slots) -> tuple[torch.Tensor, ...]:
        """One RotaryEmbedding per Q and K, then one GroupQueryAttention over the cache."""
        q, k = (rotary_embedding(proj(h), position_ids, *self.rope_tables()) for proj in (attn.q_proj, attn.k_proj))
        heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        return fused_attention(q, k, attn.v_proj(h), past, bias, slots.cache_position, (heads, kv_heads), attn.scaling)

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


def load(folder: Path) -> LlamaAdapter:
    return LlamaAdapter(load_causal_lm(folder, MODEL_TYPES))
