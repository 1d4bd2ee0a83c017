"""GPT-2 (transformers GPT2LMHeadModel): learned positions, LayerNorm, fused QKV, tied head.

The adapter drives the HF modules' weights directly (transformers models/gpt2/modeling_gpt2.py,
GPT2Block.forward without the Cache object) so torch.export sees plain tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from seqport.engine.errors import ExportError
from seqport.export.adapter import KV, ModelSpec, tied_projection
from seqport.export.attention import attention_lengths, fused_attention
from seqport.export.cache_slots import step_slots
from seqport.export.causal import attend, attention_bias, eos_ids, generation_defaults, load_causal_lm, split_heads

ARCHITECTURE = "decoder-only"


class GPT2Adapter:
    """Decoder-only adapter over a GPT2LMHeadModel (see export/causal.py DecoderOnlyAdapter)."""

    def __init__(self, model) -> None:
        config = model.config
        if getattr(config, "add_cross_attention", False):
            raise ExportError("GPT-2 with cross-attention (add_cross_attention=True) is not a decoder-only model")
        self.model = model.eval()
        self.config = config
        self.head_dim = config.n_embd // config.n_head
        #: "portable" or "fused" (export/attention.py); the exporter sets it while it traces.
        self.attention = "portable"
        self.scaling = [attention_scaling(config, i) for i in range(config.n_layer)]

    def spec(self) -> ModelSpec:
        c, gc = self.config, self.model.generation_config
        eos = eos_ids(gc.eos_token_id, c.eos_token_id)
        pad = gc.pad_token_id if gc.pad_token_id is not None else c.pad_token_id
        return ModelSpec(
            family="gpt2",
            vocab_size=c.vocab_size,
            max_positions=c.n_positions,
            num_layers=c.n_layer,
            num_heads=c.n_head,
            num_kv_heads=c.n_head,
            head_dim=self.head_dim,
            eos=eos,
            pad=pad if pad is not None else (eos[0] if eos else None),  # GPT-2 has no pad: batch with eos
            bos=gc.bos_token_id if gc.bos_token_id is not None else c.bos_token_id,
            architecture=ARCHITECTURE,
            generation=generation_defaults(gc),
        )

    def decode_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[KV],
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        body = self.model.transformer
        slots = step_slots(past[0], input_ids.shape[1], cache_position)
        x = body.wte(input_ids) + body.wpe(position_ids)  # (B, T, d)
        bias = attention_bias(attention_mask, slots, x.dtype)  # (B, 1, T, P+T or C)
        present, heads = [], (self.config.n_head, self.config.n_head)
        lengths = attention_lengths(x, past[0][0], cache_position) if self.attention == "fused" else None
        for block, scaling, (past_k, past_v) in zip(body.h, self.scaling, past):
            qkv = block.attn.c_attn(block.ln_1(x))  # (B, T, 3d): Q|K|V packed
            if self.attention == "fused":  # one GroupQueryAttention with H_kv = H, QKV packed
                out, k, v = fused_attention(
                    (qkv, None, None), (past_k, past_v), lengths, bias, None, cache_position, heads, scaling
                )  # fmt: skip
            else:
                q, k, v = qkv.split(self.config.n_embd, dim=2)  # 3 × (B, T, d)
                q, k, v = (split_heads(t, self.head_dim) for t in (q, k, v))  # (B, H, T, D)
                k, v = slots.extend((past_k, past_v), (k, v))  # (B, H, P+T or C, D)
                out = attend(q, k, v, bias, scaling)  # (B, T, H*D)
            present.append((k, v))
            x = x + block.attn.c_proj(out)
            x = x + block.mlp(block.ln_2(x))
        return body.ln_f(x), present

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return tied_projection(hidden, self.model.lm_head.weight).float()  # (B, K, V)

    def empty_past(self, batch: int) -> list[KV]:
        zero = torch.zeros(batch, self.config.n_head, 0, self.head_dim)  # (B, H, 0, D)
        return [(zero, zero)] * self.config.n_layer


def attention_scaling(config, layer: int) -> float:
    """The score scale of `layer`, as GPT2Attention computes it (transformers 5 stores it as
    `attn.scaling`; 4.57 has no such attribute, so the adapter computes it from the config)."""
    scaling = (config.n_embd // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0
    return scaling / (layer + 1) if config.scale_attn_by_inverse_layer_idx else scaling


def load(folder: Path) -> GPT2Adapter:
    return GPT2Adapter(load_causal_lm(folder, ("gpt2",)))
