"""Fused attention for the exported graphs: onnxruntime's contrib GroupQueryAttention.

`seqport export --attention fused` makes a decoder-only family's self-attention (Llama,
Mistral, Qwen2 with grouped-query K/V; GPT-2 with H_kv = H) one
`com.microsoft.GroupQueryAttention` node per layer instead of the portable MatMul/Softmax
subgraph (`--attention portable`, the default, which any ONNX runtime runs). The adapter calls
`group_query_attention`, a torch custom op: in PyTorch it computes exactly the portable path
(concatenate the cache, eager softmax attention), and the exporter translates it to the
contrib node through `TRANSLATIONS` (torch.onnx's custom_translation_table).

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
Rotary embedding is a separate com.microsoft.RotaryEmbedding node per Q and K (`rotary_embedding`)
with per-token position ids and cos/sin tables over the model's positions: the attention node's
own `do_rotary` uses only the first position id of a prompt, which would rotate a left-padded
row's keys by the wrong positions.

onnxruntime's CPU kernel needs a head size that is a multiple of 8 (`check_attention`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from seqport.engine.errors import ExportError
from seqport.engine.manifest import ATTENTION_MODES

#: onnxruntime's GroupQueryAttention kernels take head sizes that are multiples of this.
HEAD_SIZE_MULTIPLE = 8


@torch.library.custom_op("seqport::group_query_attention", mutates_args=())
def group_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped-query attention over past + new keys, in GroupQueryAttention's layouts.

    Args:
        query: (B, T, H*D) with rotary applied; key, value: (B, T, H_kv*D) (key rotated).
        past_key, past_value: (B, H_kv, P, D).
        bias: additive mask (B, 1, T, P+T).
        num_heads, kv_num_heads: H and H_kv; scale: the softmax scale.

    Returns:
        output (B, T, H*D), present_key and present_value (B, H_kv, P+T, D).
    """
    new_k, new_v = _heads(key, kv_num_heads, past_key.shape[-1]), _heads(value, kv_num_heads, past_key.shape[-1])
    k, v = torch.cat([past_key, new_k], dim=2), torch.cat([past_value, new_v], dim=2)  # (B, H_kv, P+T, D)
    return _attend(query, k, v, bias, num_heads, scale), k, v


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, bias, num_heads, kv_num_heads, scale):
    b, t, _ = query.shape
    present = past_key.new_empty((b, kv_num_heads, past_key.shape[2] + t, past_key.shape[3]))
    return query.new_empty(query.shape), present, present.new_empty(present.shape)


@torch.library.custom_op("seqport::group_query_attention_buffer", mutates_args=())
def group_query_attention_buffer(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor,
    cache_position: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`group_query_attention` over preallocated buffers: the new K/V are written at
    `cache_position` (T,) of past_key/past_value (B, H_kv, C, D), which come back as present;
    bias (B, 1, T, C). Exported as the node with past and present sharing one buffer."""
    index = cache_position.view(1, 1, -1, 1).expand(query.shape[0], kv_num_heads, -1, past_key.shape[-1])
    new_k, new_v = _heads(key, kv_num_heads, past_key.shape[-1]), _heads(value, kv_num_heads, past_key.shape[-1])
    k, v = past_key.scatter(2, index, new_k), past_value.scatter(2, index, new_v)  # (B, H_kv, C, D)
    return _attend(query, k, v, bias, num_heads, scale), k, v


@group_query_attention_buffer.register_fake
def _(query, key, value, past_key, past_value, bias, cache_position, num_heads, kv_num_heads, scale):
    return query.new_empty(query.shape), past_key.new_empty(past_key.shape), past_value.new_empty(past_value.shape)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past: tuple[torch.Tensor, torch.Tensor],
    bias: torch.Tensor,
    cache_position: torch.Tensor | None,
    heads: tuple[int, int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adapters' call: `group_query_attention` over a growing cache, or
    `group_query_attention_buffer` when `cache_position` (T,) says where the new K/V go.

    Args:
        q: (B, T, H*D) (rotated where the model uses RoPE); k, v: (B, T, H_kv*D).
        past: K and V (B, H_kv, P or C, D); bias: (B, 1, T, P+T or C); heads: (H, H_kv).

    Returns:
        output (B, T, H*D) and present K, V (B, H_kv, P+T or C, D).
    """
    if cache_position is None:
        return group_query_attention(q, k, v, *past, bias, *heads, scale)
    return group_query_attention_buffer(q, k, v, *past, bias, cache_position, *heads, scale)


@torch.library.custom_op("seqport::rotary_embedding", mutates_args=())
def rotary_embedding(
    x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
) -> torch.Tensor:
    """RoPE (non-interleaved halves, as transformers' rotate_half) in onnxruntime's
    RotaryEmbedding layout.

    Args:
        x: (B, T, N*D); position_ids: int64 (B, T); cos_cache, sin_cache: (max_positions, D/2),
            the model's attention scaling included.

    Returns:
        (B, T, N*D), rotated.
    """
    half = cos_cache.shape[-1]
    cos, sin = cos_cache[position_ids], sin_cache[position_ids]  # (B, T, D/2)
    cos, sin = torch.cat((cos, cos), dim=-1)[:, :, None], torch.cat((sin, sin), dim=-1)[:, :, None]  # (B, T, 1, D)
    heads = x.view(x.shape[0], x.shape[1], -1, 2 * half)  # (B, T, N, D)
    rotated = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    return (heads * cos + rotated * sin).reshape(x.shape)


@rotary_embedding.register_fake
def _(x, position_ids, cos_cache, sin_cache):
    return x.new_empty(x.shape)


def _onnx_rotary_embedding(x, position_ids, cos_cache, sin_cache):
    """com.microsoft.RotaryEmbedding: per-token positions, so left-padded rows rotate right."""
    return _contrib_op("RotaryEmbedding", 1)(x, position_ids, cos_cache, sin_cache)


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


def _onnx_group_query_attention(query, key, value, past_key, past_value, bias, num_heads, kv_num_heads, scale):
    """The node over a growing cache: every row holds P+T slots after the step."""
    from onnxscript import opset18 as op

    total = op.Add(op.Shape(past_key, start=2, end=3), op.Shape(query, start=1, end=2))  # (1,) P+T
    last = op.Sub(total, op.Constant(value_ints=[1]))  # (1,) P+T-1
    attrs = dict(num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale)
    return _node(query, key, value, past_key, past_value, bias, last, attrs)


def _onnx_group_query_attention_buffer(
    query, key, value, past_key, past_value, bias, cache_position, num_heads, kv_num_heads, scale
):
    """The node over shared buffers: the step fills slots up to cache_position[-1]; the node
    writes in place when the engine binds present to past (IOBinding), and reads only the
    slots up to there, so the bias is cut to them."""
    from onnxscript import opset18 as op

    last = op.Slice(cache_position, op.Constant(value_ints=[-1]), op.Constant(value_ints=[2**62]))  # (1,)
    total = op.Add(last, op.Constant(value_ints=[1]))  # (1,)
    bias = op.Slice(bias, op.Constant(value_ints=[0]), total, op.Constant(value_ints=[3]))  # (B, 1, T, total)
    attrs = dict(num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale)
    return _node(query, key, value, past_key, past_value, bias, last, attrs)


def _node(query, key, value, past_key, past_value, bias, last, attrs: dict):
    """GroupQueryAttention with seqlens_k = `last` (1,) for every row, total_sequence_length =
    last + 1 and query_seqlens = T for every row."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    rows = op.Shape(query, start=0, end=1)  # (1,) B
    seqlens_k = op.Cast(op.Expand(last, rows), to=TensorProto.INT32)  # (B,)
    query_seqlens = op.Cast(op.Expand(op.Shape(query, start=1, end=2), rows), to=TensorProto.INT32)  # (B,)
    total_length = op.Cast(op.Squeeze(op.Add(last, op.Constant(value_ints=[1]))), to=TensorProto.INT32)  # ()
    return _contrib_op("GroupQueryAttention", 3)(
        query, key, value, past_key, past_value, seqlens_k, total_length,
        None, None, None, bias, None, None, None, None, None, query_seqlens, **attrs,
    )  # fmt: skip


def _contrib_op(name: str, num_outputs: int):
    """An onnxscript Op for onnxruntime's com.microsoft `name`, its schema copied from
    onnxruntime's registry (onnx.defs knows only the standard domains, and the exporter maps
    positional inputs and attributes through the schema); only its first `num_outputs`
    outputs, since the exporter creates every output the schema lists."""
    from onnx.defs import OpSchema
    from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema
    from onnxscript.values import Op, Opset

    (ort,) = [s for s in get_all_operator_schema() if s.name == name and s.domain == "com.microsoft"]

    def enum(kind, value):  # onnxruntime's pybind enums → onnx's, by member name
        return getattr(kind, str(value).rsplit(".", 1)[-1])

    def params(items):
        option = OpSchema.FormalParameterOption
        return [OpSchema.FormalParameter(p.name, p.typeStr, "", param_option=enum(option, p.option)) for p in items]

    schema = OpSchema(
        name,
        "com.microsoft",
        ort.since_version,
        inputs=params(ort.inputs),
        outputs=params(ort.outputs[:num_outputs]),
        type_constraints=[(t.type_param_str, list(t.allowed_type_strs), "") for t in ort.type_constraints],
        attributes=[
            OpSchema.Attribute(a.name, enum(OpSchema.AttrType, a.type), "", required=a.required)
            for a in ort.attributes.values()
        ],
    )
    return Op(Opset("com.microsoft", 1), name, schema)


#: torch.onnx custom_translation_table entries for the fused operators.
TRANSLATIONS = {
    torch.ops.seqport.group_query_attention.default: _onnx_group_query_attention,
    torch.ops.seqport.group_query_attention_buffer.default: _onnx_group_query_attention_buffer,
    torch.ops.seqport.rotary_embedding.default: _onnx_rotary_embedding,
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
    """The adapter traces `attention` inside the block and computes the portable path again after
    it, so validation compares the fused graph with the model's own attention."""
    if attention == "portable":
        yield
        return
    adapter.attention = attention
    try:
        yield
    finally:
        adapter.attention = "portable"
