"""What an export recorded about itself: its parity figures against PyTorch (with the real-text
check) and what --optimize and --quantize did. Part of the manifest schema (engine/manifest.py
re-exports every class), kept in its own module because it only grows with new export options.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextCheck:
    """Export-time generation check on real text encoded by the model's own tokenizer.

    Args:
        prompts: the sentences (decoder-only: prompts; encoder-decoder: sources).
        steps: greedy steps taken per prompt, in PyTorch and in onnxruntime, each on its own cache.
        greedy_equal: prompts whose `steps` greedy ids are identical in both.
        near_ties: prompts where the two picked different tokens whose PyTorch logits were
            within the logits tolerance of each other (accepted: noise, not a fault).
        top_k: size of the next-token sets compared at every prompt position and greedy step.
        top_k_agreement: mean fraction of PyTorch's top-k ids that onnxruntime's top-k holds.
        max_abs_diff: largest |ort - torch| logit on that text.
    """

    prompts: list[str]
    steps: int
    greedy_equal: int
    near_ties: int
    top_k: int
    top_k_agreement: float
    max_abs_diff: float


@dataclass(frozen=True)
class Validation:
    """Export-time parity against PyTorch: max |ort - torch| per component and output.

    An output passes when max |ort - torch| <= tolerance[dtype] + rtol[dtype] * max |torch|
    (both already multiplied by `scale`, the export's `tolerance` option). `text` is the
    generation check on real sentences (None for encoder-only models or without a tokenizer).
    """

    tolerance: dict[str, float]
    max_abs_diff: dict[str, dict[str, float]]
    cases: list[str] = field(default_factory=list)
    rtol: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    text: TextCheck | None = None


@dataclass(frozen=True)
class Optimization:
    """Offline graph fusions applied after export (`seqport export --optimize`), re-validated.

    Args:
        tool: the optimizer and its version, e.g. "onnxruntime.transformers 1.32.0".
        model_type: the optimizer's pattern set that was used ("bart", "bert", "gpt2", ...).
        fusions: per component, each fused operator that was created and how many.
        validation: the fused components against PyTorch, with the export's cases and tolerances.
    """

    tool: str
    model_type: str
    fusions: dict[str, dict[str, int]]
    validation: Validation


@dataclass(frozen=True)
class Quantization:
    """int8 weights (`seqport export --quantize int8`) and how far they moved the outputs.

    fp32 tolerances do not apply to int8 logits: `max_abs_diff` is information; the gate is the
    greedy token agreement with the fp32 components on a fixed set of inputs.

    Args:
        method: "dynamic-int8": int8 weights, activations quantized at run time.
        per_channel: one weight scale per output channel (True) or per tensor (False).
        op_types: operator types whose weights were quantized.
        quantized_nodes: per component, how many nodes were quantized.
        token_agreement: fraction of target positions where the int8 components pick the fp32
            components' greedy token (teacher-forced on the fp32 output).
        min_agreement: the gate token_agreement had to reach.
        sequence_match: fraction of inputs whose free-running greedy output is identical.
        candidates: token_agreement of each setting tried ("per_tensor", "per_channel").
        max_abs_diff: per component output, the largest |int8 - fp32| on those inputs.
        inputs: what the fixed inputs were.
        bytes: per component, file size [fp32, int8].
    """

    method: str
    per_channel: bool
    op_types: list[str]
    quantized_nodes: dict[str, int]
    token_agreement: float
    min_agreement: float
    sequence_match: float
    candidates: dict[str, float]
    max_abs_diff: dict[str, dict[str, float]]
    inputs: str
    bytes: dict[str, list[int]] = field(default_factory=dict)
