"""onnxruntime contrib operators for the fused graphs (`--attention fused`), other than attention.

- `contrib_op`: an onnxscript Op for any com.microsoft operator, its schema read from
  onnxruntime's registry; export/attention.py builds its nodes with it.
- `skip_rms_norm`: a torch custom op for "residual add, then RMSNorm" that returns both the
  normalised value and the sum, exported as one com.microsoft.SkipSimplifiedLayerNormalization
  (onnxruntime-genai's model builder writes the same node between every pair of sublayers).
  onnxruntime's own SkipLayerNormFusion does not fuse the exported Add + SimplifiedLayerNormalization
  of a dynamic-shape graph, so the fused graph states it directly: one node instead of an Add
  and a norm, twice per layer.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("seqport::skip_rms_norm", mutates_args=())
def skip_rms_norm(
    x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x + skip, as transformers' LlamaRMSNorm (float32 statistics).

    Args:
        x, skip: (B, T, d); weight: (d,); eps: the norm's variance epsilon.

    Returns:
        normalised (B, T, d) and the sum x + skip (B, T, d), the next residual.
    """
    total = x + skip
    variance = total.float().pow(2).mean(-1, keepdim=True)
    return weight * (total.float() / torch.sqrt(variance + eps)).to(total.dtype), total


@skip_rms_norm.register_fake
def _(x, skip, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _onnx_skip_rms_norm(x, skip, weight, eps):
    """SkipSimplifiedLayerNormalization: outputs 0 (normalised) and 3 (input + skip)."""
    normed, _mean, _inv_std, total = contrib_op("SkipSimplifiedLayerNormalization", 4)(x, skip, weight, epsilon=eps)
    return normed, total


def contrib_op(name: str, num_outputs: int):
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


#: torch.onnx custom_translation_table entries of this module.
TRANSLATIONS = {torch.ops.seqport.skip_rms_norm.default: _onnx_skip_rms_norm}
