"""Fused attention for the exported graphs: onnxruntime's contrib GroupQueryAttention.

`seqport export --attention fused` makes a decoder-only family's self-attention one
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
- past K/V (B, H_kv, P, D) in, present (B, H_kv, P+T, D) out (no shared buffer).
Rotary embedding stays outside the node: its `do_rotary` uses only the first position id of a
prompt, which would shift the cached keys of a left-padded row (see docs/runtimes.md).

onnxruntime's CPU kernel needs a head size that is a multiple of 8 (`fused_problem`).
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
    b, t, _ = query.shape
    d = past_key.shape[-1]
    q = query.view(b, t, num_heads, d).transpose(1, 2)  # (B, H, T, D)
    k = torch.cat([past_key, key.view(b, t, kv_num_heads, d).transpose(1, 2)], dim=2)  # (B, H_kv, P+T, D)
    v = torch.cat([past_value, value.view(b, t, kv_num_heads, d).transpose(1, 2)], dim=2)
    groups = num_heads // kv_num_heads
    ks = k.repeat_interleave(groups, dim=1) if groups > 1 else k  # (B, H, P+T, D)
    vs = v.repeat_interleave(groups, dim=1) if groups > 1 else v
    scores = torch.matmul(q, ks.transpose(2, 3)) * scale + bias  # (B, H, T, P+T)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, vs).transpose(1, 2).reshape(b, t, num_heads * d)  # (B, T, H*D)
    return out, k, v


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, bias, num_heads, kv_num_heads, scale):
    b, t, _ = query.shape
    present = past_key.new_empty((b, kv_num_heads, past_key.shape[2] + t, past_key.shape[3]))
    return query.new_empty(query.shape), present, present.new_empty(present.shape)


def _onnx_group_query_attention(query, key, value, past_key, past_value, bias, num_heads, kv_num_heads, scale):
    """The contrib node, with seqlens_k, total_sequence_length and query_seqlens from the shapes."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    rows = op.Shape(query, start=0, end=1)  # (1,) B
    new = op.Shape(query, start=1, end=2)  # (1,) T
    total = op.Add(op.Shape(past_key, start=2, end=3), new)  # (1,) P+T
    seqlens_k = op.Cast(op.Expand(op.Sub(total, op.Constant(value_ints=[1])), rows), to=TensorProto.INT32)  # (B,)
    query_seqlens = op.Cast(op.Expand(new, rows), to=TensorProto.INT32)  # (B,)
    total_length = op.Cast(op.Squeeze(total), to=TensorProto.INT32)  # scalar
    return _contrib_op("GroupQueryAttention", 3)(
        query, key, value, past_key, past_value, seqlens_k, total_length,
        None, None, None, bias, None, None, None, None, None, query_seqlens,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale,
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
TRANSLATIONS = {torch.ops.seqport.group_query_attention.default: _onnx_group_query_attention}


def check_attention(adapter, head_dim: int, attention: str, allocation: str) -> None:
    """Refuse an `--attention` value this model or cache kind cannot export, listing every reason.

    Raises:
        ExportError: unknown mode, or fused attention for a family without it, a preallocated
            cache, or a head size onnxruntime's kernel does not take.
    """
    if attention not in ATTENTION_MODES:
        raise ExportError(f"--attention must be one of {', '.join(ATTENTION_MODES)}, got {attention!r}")
    if attention == "portable":
        return
    problems = []
    if not hasattr(adapter, "attention"):
        problems.append(f"{type(adapter).__name__} has no fused attention (so far: Llama, Mistral, Qwen2)")
    if allocation != "growing":
        problems.append(f"fused attention takes a growing KV cache, not --kv-cache {allocation}")
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
