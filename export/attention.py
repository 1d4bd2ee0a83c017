"""Fused attention for the exported graphs: onnxruntime's contrib GroupQueryAttention.

`seqport export --attention fused` makes a decoder-only family's self-attention (Llama,
Mistral, Qwen2 with grouped-query K/V; GPT-2 with H_kv = H) one
`com.microsoft.GroupQueryAttention` node per layer instead of the portable MatMul/Softmax
subgraph (`--attention portable`, the default, which any ONNX runtime runs). The adapter calls
`grouped_query_attention`, a torch custom op: in PyTorch it computes exactly the portable path
(rotary embedding, the cache concatenated, eager softmax attention), and the exporter
translates it to the contrib node through `TRANSLATIONS` (torch.onnx's custom_translation_table).

The node is laid out as onnxruntime-genai's model builder lays it out, so a step runs few nodes:
- Q, K and V come from one packed MatMul (B, T, (H + 2·H_kv)·D), the node's packed-QKV input;
- rotary embedding runs inside the node (`do_rotary` with cos/sin tables over the model's
  positions) with per-token `position_ids`: with `query_seqlens` given the kernel rotates each
  token by its own position id, also in a prompt, so a left-padded row rotates as the same
  prompt alone does. The kernel's rotary needs a head size that is a multiple of 16; other
  head sizes (multiples of 8) rotate Q and K with one com.microsoft.RotaryEmbedding each first;
- the lengths (`seqlens_k`, `total_sequence_length`, `query_seqlens`) are computed once per
  step (`gqa_lengths`) and shared by every layer.

The node is wired so the engine feeds nothing new and the cache stays a growing one:
- the causal + padding (+ sliding window) mask is the node's `attention_bias` (B, 1, T, P+T),
  the same additive bias the portable graph adds, so left-padded rows and Mistral/Qwen2
  windows behave as before (`local_window_size` stays unused);
- every row is treated as holding all P+T slots: `seqlens_k` = P+T-1 per row,
  `total_sequence_length` = P+T and `query_seqlens` = T per row, derived inside the graph from
  the shapes of the past and new keys (`query_seqlens` lets a batch of several rows take T > 1
  new tokens after a past, which the node otherwise refuses);
- growing cache: past K/V (B, H_kv, P, D) in, present (B, H_kv, P+T, D) out;
- preallocated cache (`--kv-cache preallocated`): past and present are the same (B, H_kv, C, D)
  buffer (the node's past_present_share_buffer: it writes in place when the engine binds
  present to past, as it does through IOBinding), `seqlens_k` = cache_position[-1] per row,
  and the bias is cut to the first cache_position[-1] + 1 slots, the ones the node reads.

onnxruntime's CPU kernel needs a head size that is a multiple of 8 (`check_attention`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from seqport.engine.errors import ExportError
from seqport.engine.manifest import ATTENTION_MODES
from seqport.export.contrib_ops import TRANSLATIONS as CONTRIB_TRANSLATIONS
from seqport.export.contrib_ops import contrib_op

#: onnxruntime's GroupQueryAttention kernels take head sizes that are multiples of this.
HEAD_SIZE_MULTIPLE = 8
#: onnxruntime's rotary embedding inside GroupQueryAttention takes head sizes that are multiples of this.
ROTARY_IN_ATTENTION_MULTIPLE = 16


@torch.library.custom_op("seqport::gqa_lengths", mutates_args=())
def gqa_lengths(
    query: torch.Tensor, past_key: torch.Tensor, cache_position: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GroupQueryAttention's length inputs for one step, shared by every layer.

    Args:
        query: (B, T, ...) any per-token tensor of the step; past_key: (B, H_kv, P or C, D);
        cache_position: int64 (T,) slots of a preallocated cache, None for a growing one.

    Returns:
        seqlens_k int32 (B,) (the last filled slot), total_sequence_length int32 () (slots read),
        query_seqlens int32 (B,) (T per row) and key_count int64 (1,) (slots read, to cut the bias).
    """
    rows, new = query.shape[0], query.shape[1]
    last = past_key.shape[2] + new - 1 if cache_position is None else int(cache_position[-1])
    seqlens = torch.full((rows,), last, dtype=torch.int32, device=query.device)
    total = torch.tensor(last + 1, dtype=torch.int32, device=query.device)
    return seqlens, total, torch.full((rows,), new, dtype=torch.int32), torch.tensor([last + 1])


@gqa_lengths.register_fake
def _(query, past_key, cache_position):
    rows = query.shape[0]
    int32 = dict(dtype=torch.int32)
    return query.new_empty((rows,), **int32), query.new_empty((), **int32), query.new_empty((rows,), **int32), (
        query.new_empty((1,), dtype=torch.int64)
    )


@torch.library.custom_op("seqport::grouped_query_attention", mutates_args=())
def grouped_query_attention(
    query: torch.Tensor,
    key: torch.Tensor | None,
    value: torch.Tensor | None,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_length: torch.Tensor,
    query_seqlens: torch.Tensor,
    key_count: torch.Tensor,
    bias: torch.Tensor,
    position_ids: torch.Tensor | None,
    cos_cache: torch.Tensor | None,
    sin_cache: torch.Tensor | None,
    cache_position: torch.Tensor | None,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped-query attention over past + new keys, in GroupQueryAttention's layouts.

    Args:
        query: (B, T, H*D), or packed Q|K|V (B, T, (H + 2·H_kv)·D) with key and value None.
        key, value: (B, T, H_kv*D) or None (packed query).
        past_key, past_value: (B, H_kv, P, D), or the (B, H_kv, C, D) buffers with `cache_position`.
        seqlens_k, total_length, query_seqlens, key_count: `gqa_lengths` of the step (the node's
            inputs; the PyTorch computation does not need them).
        bias: additive mask (B, 1, T, P+T or C).
        position_ids: int64 (B, T) and cos_cache, sin_cache (max_positions, D/2): rotate Q and K
            inside (RoPE over halves, as transformers' rotate_half); all None: already rotated
            or no RoPE.
        cache_position: int64 (T,) slots of the new K/V in the buffers, None for a growing cache.
        num_heads, kv_num_heads: H and H_kv; scale: the softmax scale.

    Returns:
        output (B, T, H*D), present_key and present_value (B, H_kv, P+T or C, D).
    """
    d = past_key.shape[-1]
    if key is None or value is None:
        query, key, value = query.split([num_heads * d, kv_num_heads * d, kv_num_heads * d], dim=-1)
    if position_ids is not None and cos_cache is not None and sin_cache is not None:
        tables = (position_ids, cos_cache, sin_cache)
        query, key = _rotate(query, *tables), _rotate(key, *tables)
    new_k, new_v = _heads(key, kv_num_heads, d), _heads(value, kv_num_heads, d)  # (B, H_kv, T, D)
    if cache_position is None:
        k, v = torch.cat([past_key, new_k], dim=2), torch.cat([past_value, new_v], dim=2)  # (B, H_kv, P+T, D)
    else:
        index = cache_position.view(1, 1, -1, 1).expand(new_k.shape)
        k, v = past_key.scatter(2, index, new_k), past_value.scatter(2, index, new_v)  # (B, H_kv, C, D)
    return _attend(query, k, v, bias, num_heads, scale), k, v


@grouped_query_attention.register_fake
def _(
    query, key, value, past_key, past_value, seqlens_k, total_length, query_seqlens, key_count, bias,
    position_ids, cos_cache, sin_cache, cache_position, num_heads, kv_num_heads, scale,
):  # fmt: skip
    (b, t, _), (_, _, slots, d) = query.shape, past_key.shape
    present = (b, kv_num_heads, slots + t if cache_position is None else slots, d)
    return query.new_empty((b, t, num_heads * d)), past_key.new_empty(present), past_value.new_empty(present)


def attention_lengths(query: torch.Tensor, past_key: torch.Tensor, cache_position: torch.Tensor | None) -> tuple:
    """The step's `gqa_lengths` (computed once, passed to every layer's `fused_attention`)."""
    return gqa_lengths(query, past_key, cache_position)


def fused_attention(
    qkv: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    past: tuple[torch.Tensor, torch.Tensor],
    lengths: tuple,
    bias: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    cache_position: torch.Tensor | None,
    heads: tuple[int, int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adapters' call: one GroupQueryAttention node.

    Args:
        qkv: (packed (B, T, (H + 2·H_kv)·D), None, None) or (q (B, T, H*D), k, v (B, T, H_kv*D)).
        past: K and V (B, H_kv, P or C, D); lengths: `attention_lengths` of the step.
        bias: (B, 1, T, P+T or C); rope: (position_ids (B, T), cos, sin (max_positions, D/2))
            to rotate inside the node, or None; cache_position: (T,) or None; heads: (H, H_kv).

    Returns:
        output (B, T, H*D) and present K, V (B, H_kv, P+T or C, D).
    """
    position_ids, cos, sin = rope if rope is not None else (None, None, None)
    return grouped_query_attention(
        *qkv, *past, *lengths, bias, position_ids, cos, sin, cache_position, *heads, scale
    )  # fmt: skip


def rotary_in_attention(head_dim: int) -> bool:
    """Whether onnxruntime's GroupQueryAttention can rotate Q and K of this head size itself."""
    return head_dim % ROTARY_IN_ATTENTION_MULTIPLE == 0


@torch.library.custom_op("seqport::rotary_embedding", mutates_args=())
def rotary_embedding(
    x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
) -> torch.Tensor:
    """RoPE (non-interleaved halves, as transformers' rotate_half) in onnxruntime's
    RotaryEmbedding layout: the separate node for head sizes GroupQueryAttention cannot rotate.

    Args:
        x: (B, T, N*D); position_ids: int64 (B, T); cos_cache, sin_cache: (max_positions, D/2),
            the model's attention scaling included.

    Returns:
        (B, T, N*D), rotated.
    """
    return _rotate(x, position_ids, cos_cache, sin_cache)


@rotary_embedding.register_fake
def _(x, position_ids, cos_cache, sin_cache):
    return x.new_empty(x.shape)


def _rotate(x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor):
    """(B, T, N*D) rotated by each token's position (tables (max_positions, D/2))."""
    half = cos_cache.shape[-1]
    cos, sin = cos_cache[position_ids], sin_cache[position_ids]  # (B, T, D/2)
    cos, sin = torch.cat((cos, cos), dim=-1)[:, :, None], torch.cat((sin, sin), dim=-1)[:, :, None]  # (B, T, 1, D)
    heads = x.view(x.shape[0], x.shape[1], -1, 2 * half)  # (B, T, N, D)
    rotated = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    return (heads * cos + rotated * sin).reshape(x.shape)


def _onnx_rotary_embedding(x, position_ids, cos_cache, sin_cache):
    """com.microsoft.RotaryEmbedding: per-token positions, so left-padded rows rotate right."""
    return contrib_op("RotaryEmbedding", 1)(x, position_ids, cos_cache, sin_cache)


def _heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(B, T, H*D) → (B, H, T, D)."""
    return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


def _attend(query, k, v, bias, num_heads: int, scale: float) -> torch.Tensor:
    """query (B, T, H*D) over k, v (B, H_kv, S, D) with bias (B, 1, T, S) → (B, T, H*D)."""
    b, t, _ = query.shape
    q = _heads(query, num_heads, k.shape[-1])  # (B, H, T, D)
    groups = num_heads // k.shape[1]
    ks = k.repeat_interleave(groups, dim=1) if groups > 1 else k  # (B, H, S, D)
    vs = v.repeat_interleave(groups, dim=1) if groups > 1 else v
    scores = torch.matmul(q, ks.transpose(2, 3)) * scale + bias  # (B, H, T, S)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, vs).transpose(1, 2).reshape(b, t, -1)  # (B, T, H*D)


def _onnx_gqa_lengths(query, past_key, cache_position):
    """Once per step: growing cache, every row holds P+T slots; buffers, slots up to cache_position[-1]."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    if cache_position is None:
        total = op.Add(op.Shape(past_key, start=2, end=3), op.Shape(query, start=1, end=2))  # (1,) P+T
    else:
        total = op.Add(op.Slice(cache_position, op.Constant(value_ints=[-1]), op.Constant(value_ints=[2**62])), 1)
    last = op.Sub(total, op.Constant(value_ints=[1]))  # (1,)
    rows = op.Shape(query, start=0, end=1)  # (1,) B
    seqlens_k = op.Cast(op.Expand(last, rows), to=TensorProto.INT32)  # (B,)
    query_seqlens = op.Cast(op.Expand(op.Shape(query, start=1, end=2), rows), to=TensorProto.INT32)  # (B,)
    return seqlens_k, op.Cast(op.Squeeze(total), to=TensorProto.INT32), query_seqlens, total


def _onnx_grouped_query_attention(
    query, key, value, past_key, past_value, seqlens_k, total_length, query_seqlens, key_count, bias,
    position_ids, cos_cache, sin_cache, cache_position, num_heads, kv_num_heads, scale,
):  # fmt: skip
    """The node; over shared buffers it writes in place when the engine binds present to past
    (IOBinding) and reads only the slots up to cache_position[-1], so the bias is cut to them."""
    from onnxscript import opset18 as op

    if cache_position is not None:
        bias = op.Slice(bias, op.Constant(value_ints=[0]), key_count, op.Constant(value_ints=[3]))  # (B, 1, T, total)
    rotary = position_ids is not None and cos_cache is not None
    attrs = dict(num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, do_rotary=int(rotary))
    if not rotary:
        position_ids = cos_cache = sin_cache = None
    return contrib_op("GroupQueryAttention", 3)(
        query, key, value, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache, position_ids,
        bias, None, None, None, None, None, query_seqlens, **attrs,
    )  # fmt: skip


#: torch.onnx custom_translation_table entries for the fused operators.
TRANSLATIONS = {
    torch.ops.seqport.gqa_lengths.default: _onnx_gqa_lengths,
    torch.ops.seqport.grouped_query_attention.default: _onnx_grouped_query_attention,
    torch.ops.seqport.rotary_embedding.default: _onnx_rotary_embedding,
    **CONTRIB_TRANSLATIONS,
}


def check_attention(adapter, head_dim: int, attention: str) -> None:
    """Refuse an `--attention` value this model cannot export, listing every reason.

    Raises:
        ExportError: unknown mode, or fused attention for a family without it or with a head
            size onnxruntime's kernel does not take.
    """
    if attention not in ATTENTION_MODES:
        raise ExportError(f"--attention must be one of {', '.join(ATTENTION_MODES)}, got {attention!r}")
    if attention == "portable":
        return
    problems = []
    if not hasattr(adapter, "attention"):
        problems.append(f"{type(adapter).__name__} has no fused attention (so far: GPT-2, Llama, Mistral, Qwen2)")
    if head_dim % HEAD_SIZE_MULTIPLE:
        problems.append(
            f"onnxruntime's GroupQueryAttention needs a head size that is a multiple of {HEAD_SIZE_MULTIPLE}, "
            f"this model's is {head_dim}"
        )
    if problems:
        raise ExportError("--attention fused: " + "; ".join(problems) + ". Export with --attention portable.")


@contextlib.contextmanager
def attention_mode(adapter, attention: str) -> Iterator[None]:
    """The adapter traces `attention` inside the block (with its packed weights, where it has
    `fused_weights`) and computes the portable path again after it, so validation compares the
    fused graph with the model's own attention."""
    if attention == "portable":
        yield
        return
    adapter.attention = attention
    try:
        with getattr(adapter, "fused_weights", contextlib.nullcontext)():
            yield
    finally:
        adapter.attention = "portable"
