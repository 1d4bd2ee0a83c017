"""Fused attention for encoder-decoder graphs: onnxruntime's contrib MultiHeadAttention.

`seqport export --attention fused` on an encoder-decoder family (the reference Transformer and
the bundled translator, T5/mT5, BART/mBART, Marian) makes every attention one
`com.microsoft.MultiHeadAttention` node instead of the portable MatMul/Softmax subgraph:
- the encoder's self-attention: query, key, value (B, S, H*D) straight from the projections;
- the decoder's self-attention over a growing cache: new key/value (B, T, H*D) plus the node's
  `past_key`/`past_value` (B, H, P, D), whose `present_key`/`present_value` (B, H, P+T, D) are
  the decoder's present outputs (the node does the concatenation);
- the decoder's self-attention over a preallocated cache: the new K/V are scattered into the
  (B, H, C, D) buffers as in the portable graph (onnxruntime's CPU kernel has no shared
  past/present buffer for this node), then the node reads the buffers as 4-D key/value;
- the cross-attention: the encoder's precomputed cross K/V (B, H, S, D) go in as 4-D key/value
  (the node's "past in key/value" form), so the step graph still never re-projects them.

Masks stay what the portable graph adds: the adapter's additive bias (padding, causal, T5's
relative position bias), given as the node's `attention_bias` (B or 1, H or 1, T, L) with the
model's own softmax scale (T5: 1.0, its 1/sqrt(d) is folded into the weights). So left-padded
past slots (per-row positions, continuous batching) behave exactly as in the portable graph,
and the engine feeds the same inputs. Adapters call `fused_attention` / `fused_self_attention`,
torch custom ops whose PyTorch body is the portable arithmetic; the exporter translates them
through `TRANSLATIONS` (torch.onnx's custom_translation_table), as export/attention.py does for
decoder-only GroupQueryAttention.
"""

from __future__ import annotations

import torch

from seqport.engine.errors import ExportError
from seqport.engine.manifest import ATTENTION_MODES
from seqport.export.adapter import KV
from seqport.export.cache_slots import StepSlots
from seqport.export.contrib_ops import contrib_op


@torch.library.custom_op("seqport::multi_head_attention", mutates_args=())
def multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """softmax(Q K^T · scale + bias) V in MultiHeadAttention's layouts.

    Args:
        query: (B, T, H*D); key, value: (B, L, H*D) or (B, H, L, D); bias: (B|1, 1|H, T, L).

    Returns:
        (B, T, H*D).
    """
    b, t, width = query.shape
    d = width // num_heads
    q = query.view(b, t, num_heads, d).transpose(1, 2)  # (B, H, T, D)
    k, v = (x if x.dim() == 4 else x.view(b, x.shape[1], num_heads, d).transpose(1, 2) for x in (key, value))
    scores = torch.matmul(q, k.transpose(2, 3)) * scale + bias  # (B, H, T, L)
    return torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(b, t, width)  # (B, T, H*D)


@multi_head_attention.register_fake
def _(query, key, value, bias, num_heads, scale):
    return query.new_empty(query.shape)


@torch.library.custom_op("seqport::multi_head_attention_past", mutates_args=())
def multi_head_attention_past(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor,
    num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`multi_head_attention` over past + new keys: key, value (B, T, H*D) after past_key,
    past_value (B, H, P, D); bias (B|1, 1|H, T, P+T).

    Returns:
        output (B, T, H*D), present_key and present_value (B, H, P+T, D).
    """
    b, t, _ = key.shape
    new_k, new_v = (x.view(b, t, num_heads, -1).transpose(1, 2) for x in (key, value))  # (B, H, T, D)
    k, v = torch.cat([past_key, new_k], dim=2), torch.cat([past_value, new_v], dim=2)  # (B, H, P+T, D)
    return multi_head_attention(query, k, v, bias, num_heads, scale), k, v


@multi_head_attention_past.register_fake
def _(query, key, value, past_key, past_value, bias, num_heads, scale):
    b, t, _ = query.shape
    present = past_key.new_empty((b, num_heads, past_key.shape[2] + t, past_key.shape[3]))
    return query.new_empty(query.shape), present, present.new_empty(present.shape)


def _rows(bias: torch.Tensor, t) -> torch.Tensor:
    """An additive bias (T, L) or (B|1, 1|H, 1|T, L) → (B|1, 1|H, T, L): the node wants one row per query."""
    if bias.dim() == 2:
        bias = bias[None, None]  # (1, 1, T, L)
    return bias.expand(-1, -1, t, -1)


def fused_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """Attention without a cache (encoder self-attention, cross-attention over precomputed K/V).

    Args:
        query: (B, T, H*D), projected; key, value: (B, L, H*D) projected, or (B, H, L, D) (cross K/V).
        bias: additive mask (T, L) or (B|1, 1|H, 1|T, L).
        num_heads: H; scale: the model's softmax scale.

    Returns:
        (B, T, H*D), heads concatenated (before the output projection).
    """
    return multi_head_attention(query, key, value, _rows(bias, query.shape[1]), num_heads, scale)


def fused_self_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past: KV,
    slots: StepSlots,
    bias: torch.Tensor,
    num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, KV]:
    """The decoder's self-attention over its cache: the node's past/present over a growing cache,
    or the portable scatter into a preallocated one followed by the node over the buffers.

    Args:
        query, key, value: this step's projections (B, T, H*D).
        past: K and V (B, H, P or C, D); slots: where the new tokens go (export/cache_slots.py).
        bias: additive mask (T, P+T or C) or (B|1, 1|H, T, P+T or C).

    Returns:
        output (B, T, H*D) and present K, V (B, H, P+T or C, D).
    """
    rows = _rows(bias, query.shape[1])
    if slots.cache_position is None:
        out, k, v = multi_head_attention_past(query, key, value, *past, rows, num_heads, scale)
        return out, (k, v)
    b, t, _ = key.shape
    new = tuple(x.view(b, t, num_heads, -1).transpose(1, 2) for x in (key, value))  # (B, H, T, D)
    k, v = slots.extend(past, new)  # (B, H, C, D)
    return multi_head_attention(query, k, v, rows, num_heads, scale), (k, v)


def _onnx_multi_head_attention(query, key, value, bias, num_heads, scale):
    return contrib_op("MultiHeadAttention", 1)(query, key, value, None, None, bias, num_heads=num_heads, scale=scale)


def _onnx_multi_head_attention_past(query, key, value, past_key, past_value, bias, num_heads, scale):
    return contrib_op("MultiHeadAttention", 3)(
        query, key, value, None, None, bias, past_key, past_value, num_heads=num_heads, scale=scale
    )


#: torch.onnx custom_translation_table entries for the encoder-decoder fused operators.
TRANSLATIONS = {
    torch.ops.seqport.multi_head_attention.default: _onnx_multi_head_attention,
    torch.ops.seqport.multi_head_attention_past.default: _onnx_multi_head_attention_past,
}


def check_seq2seq_attention(adapter, attention: str) -> None:
    """Refuse an `--attention` value this encoder-decoder model cannot export.

    Raises:
        ExportError: unknown mode, or fused attention for an adapter without the fused path.
    """
    if attention not in ATTENTION_MODES:
        raise ExportError(f"--attention must be one of {', '.join(ATTENTION_MODES)}, got {attention!r}")
    if attention == "fused" and not hasattr(adapter, "attention"):
        raise ExportError(
            f"--attention fused: {type(adapter).__name__} has no fused attention (encoder-decoder so far: the "
            "reference Transformer and the bundled translator, T5, mT5, BART, mBART, Marian). "
            "Export with --attention portable."
        )
