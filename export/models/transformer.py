"""The encoder-decoder Transformer of "Attention is all you need" (Vaswani et al., 2017).

Written as the two halves the engine runs: `encode()` once per request (it also projects the
cross-attention keys/values of every decoder layer), and `decode_step()` for any number of new
tokens on top of a past self-attention cache (past length 0 = the first step). `forward()` is
teacher forcing for training, built from the same two halves so training and export share code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seqport.export.attention_seq2seq import fused_attention, fused_self_attention
from seqport.export.cache_slots import StepSlots, step_slots

KV = tuple[torch.Tensor, torch.Tensor]  # key, value: (B, H, S, D)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class TransformerConfig:
    """Hyper-parameters; the defaults are the paper's base model at a small vocabulary."""

    vocab_size: int = 8000
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    max_positions: int = 256
    pre_norm: bool = False  # the paper is post-norm; pre-norm trains more easily when small
    activation: str = "relu"
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    bos_id: int = 1  # also the decoder start token
    eos_id: int = 2
    unk_id: int = 3
    model_type: str = "seqport-transformer"

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.num_heads} heads")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @classmethod
    def from_dict(cls, data: dict) -> TransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig keys: {unknown}")
        return cls(**data)


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def sinusoidal_table(max_positions: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): (max_positions, d)."""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


class Attention(nn.Module):
    """Multi-head scaled dot-product attention with the K/V projection split out for caching."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        #: "portable" or "fused" (export/attention_seq2seq.py); the exporter sets it while it traces.
        self.mode = "portable"

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def project_kv(self, x: torch.Tensor) -> KV:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor):
        if self.mode == "fused":  # one MultiHeadAttention node (export/attention_seq2seq.py)
            out = fused_attention(self.q_proj(x), k, v, bias, self.num_heads, self.head_dim**-0.5)
            return self.out_proj(out)
        q = self.heads(self.q_proj(x))  # (B, H, T, D)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias  # (B, H, T, S)
        weights = self.dropout(scores.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2)  # (B, T, H, D)
        return self.out_proj(out.reshape(x.shape[0], x.shape[1], -1))

    def self_attend(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Self-attention without a cache (the encoder): x (B, S, d), bias (B, 1, 1, S)."""
        if self.mode == "fused":  # key/value as projected (B, S, d): no transposes
            return self(x, self.k_proj(x), self.v_proj(x), bias)
        return self(x, *self.project_kv(x), bias)

    def step(self, x: torch.Tensor, past: KV, slots: StepSlots, bias: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """Self-attention of new tokens x (B, T, d) over the cache `past` (B, H, P or C, D):
        output (B, T, d) and present K/V (B, H, P+T or C, D)."""
        if self.mode == "fused":
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, d)
            out, kv = fused_self_attention(q, k, v, past, slots, bias, self.num_heads, self.head_dim**-0.5)
            return self.out_proj(out), kv
        k, v = slots.extend(past, self.project_kv(x))  # (B, H, P+T or C, D)
        return self(x, k, v, bias), (k, v)


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = _ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class Sublayer(nn.Module):
    """Residual + LayerNorm around one sublayer, pre- or post-norm by config."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn, self.ffn = Attention(cfg), FeedForward(cfg)
        self.attn_block, self.ffn_block = Sublayer(cfg), Sublayer(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.ffn_block(self.attn_block(x, lambda h: self.self_attn.self_attend(h, bias)), self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn, self.cross_attn, self.ffn = Attention(cfg), Attention(cfg), FeedForward(cfg)
        self.self_block, self.cross_block = Sublayer(cfg), Sublayer(cfg)
        self.ffn_block = Sublayer(cfg)

    def forward(self, x, past: KV, cross: KV, self_bias, cross_bias, slots: StepSlots) -> tuple[torch.Tensor, KV]:
        present: list[KV] = []

        def attend_self(h):
            out, kv = self.self_attn.step(h, past, slots, self_bias)
            present.append(kv)
            return out

        x = self.self_block(x, attend_self)
        x = self.cross_block(x, lambda h: self.cross_attn(h, *cross, cross_bias))
        return self.ffn_block(x, self.ffn), present[0]


class Transformer(nn.Module):
    """Encoder-decoder with shared source/target embeddings tied to the output projection."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)
        self.register_buffer("positions", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        # pre-norm stacks end with a LayerNorm; post-norm layers already end with one.
        self.encoder_norm = (
            nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()
        )
        self.decoder_norm = (
            nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()
        )

    def embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids (B, T) at int64 positions (T,) or per row (B, T) → scaled embeddings plus sinusoids (B, T, d)."""
        if positions.dim() == 1:
            positions = self.positions.index_select(0, positions)  # (T, d)
        else:
            positions = self.positions[positions]  # (B, T, d): each row at its own positions
        scaled = self.embed(input_ids) * math.sqrt(self.config.d_model)
        return self.embed_dropout(scaled + positions)

    def padding_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # (B, S) 1 = token, 0 = pad -> additive (B, 1, 1, S)
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[KV]]:
        """input_ids, attention_mask: (B, S) → hidden (B, S, d) and per decoder layer cross K/V."""
        x = self.embed_tokens(input_ids, torch.arange(input_ids.shape[1], device=input_ids.device))
        bias = self.padding_bias(attention_mask, x.dtype)
        for layer in self.encoder_layers:
            x = layer(x, bias)
        x = self.encoder_norm(x)
        cross = [layer.cross_attn.project_kv(x) for layer in self.decoder_layers]
        return x, cross

    def decode_step(
        self,
        input_ids,
        encoder_attention_mask,
        cross: list[KV],
        past: list[KV],
        cache_position=None,
        position_ids=None,
        attention_mask=None,
    ):
        """New tokens (B, T) on top of past K/V (B, H, P, D) → hidden (B, T, d), present K/V.

        With `cache_position` (T,) the past is a preallocated buffer (B, H, C, D) and the new
        tokens are written at those slots (see seqport.export.cache_slots). With
        `position_ids` (B, T) and `attention_mask` (B, P+T) rows at different steps share one
        call (continuous batching): each row's tokens sit at its own positions and the mask
        hides the left-padding slots of its past.
        """
        slots = step_slots(past[0], input_ids.shape[1], cache_position)
        x = self.embed_tokens(input_ids, slots.positions if position_ids is None else position_ids)
        self_bias = slots.causal_bias(x.dtype)  # (T, P+T or C)
        if attention_mask is not None:
            padding = self.padding_bias(attention_mask, x.dtype)  # (B, 1, 1, P+T)
            self_bias = (self_bias + padding).clamp(min=torch.finfo(x.dtype).min)  # (B, 1, T, P+T), no -inf
        cross_bias = self.padding_bias(encoder_attention_mask, x.dtype)
        present = []
        for layer, layer_past, layer_cross in zip(self.decoder_layers, past, cross):
            x, kv = layer(x, layer_past, layer_cross, self_bias, cross_bias, slots)
            present.append(kv)
        return self.decoder_norm(x), present

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied output projection: (B, T, d) @ embedding^T → (B, T, V)."""
        b, k, d = hidden.shape
        # F.linear on 2-D rows: one Gemm(transB=1) on the stored table (export/adapter.py tied_projection)
        return F.linear(hidden.reshape(b * k, d), self.embed.weight).reshape(b, k, -1)  # (B, K, V)

    def empty_past(self, batch: int) -> list[KV]:
        cfg = self.config
        empty = torch.zeros(batch, cfg.num_heads, 0, cfg.head_dim, device=self.embed.weight.device)
        return [(empty, empty) for _ in range(cfg.num_decoder_layers)]

    def forward(self, src_ids, src_mask, tgt_ids) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) of the token after each target position."""
        _, cross = self.encode(src_ids, src_mask)
        hidden, _ = self.decode_step(tgt_ids, src_mask, cross, self.empty_past(src_ids.shape[0]))
        return self.logits(hidden)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))

    @classmethod
    def load(cls, folder: str | Path) -> Transformer:
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = TransformerConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return model.eval()
