"""Encoder-only export: the adapter protocol, the one `encoder` component, its validation,
and the pooling a sentence-transformers folder declares.

The graph outputs `last_hidden_state` (feature extraction: pooling runs in numpy in the
engine, as the manifest says) or `logits` (sequence classification). Shapes: B batch,
S sequence, d hidden size, L labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from seqport.engine.errors import ExportError
from seqport.engine.feeds import Signature
from seqport.engine.manifest import POOLING_MODES, Component, Pooling, TensorSpec, Validation, sha256_of
from seqport.engine.runtime import RuntimeOptions, open_runtime
from seqport.export.onnx_export import dynamic_axes, export_component
from seqport.export.validate import _Recorder, max_abs_diff, raise_failures, validation_record

logger = logging.getLogger(__name__)
FEATURE_EXTRACTION, SEQUENCE_CLASSIFICATION = "feature-extraction", "sequence-classification"
TASKS = (FEATURE_EXTRACTION, SEQUENCE_CLASSIFICATION)
B, S = "batch_size", "sequence_length"
#: sentence-transformers Pooling config keys → manifest pooling modes.
_ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_ST_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class EncoderSpec:
    """Canonical facts about an encoder-only model, normalised once from its own config.

    Args:
        family: short name recorded in the manifest ("bert", "roberta", ...).
        task: "feature-extraction" or "sequence-classification".
        vocab_size, max_positions: vocabulary size and longest input (special tokens included).
        d_model, num_layers, num_heads: hidden size, layers and attention heads.
        pad: the id inputs are right-padded with (RoBERTa derives positions from it).
        token_type_ids: whether the graph takes token_type_ids (BERT) — the engine feeds zeros.
        eos: separator ids kept last when an input is truncated; bos, unk: special ids or None.
        labels: classification label names in logits order (id2label).
        pooling: how the engine pools last_hidden_state (feature extraction).
    """

    family: str
    task: str
    vocab_size: int
    max_positions: int
    d_model: int
    num_layers: int
    num_heads: int
    pad: int
    token_type_ids: bool = False
    eos: list[int] = field(default_factory=list)
    bos: int | None = None
    unk: int | None = None
    labels: list[str] = field(default_factory=list)
    pooling: Pooling | None = None
    architecture: str = "encoder-only"


class EncoderOnlyAdapter(Protocol):
    """An encoder-only model as the engine runs it: token ids in, one tensor out."""

    def spec(self) -> EncoderSpec:
        """The model's canonical geometry, task, labels and pooling."""
        ...

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """int64 (B, S) → float32 last_hidden_state (B, S, d) or logits (B, L), per `spec().task`.

        `token_type_ids` is None unless `spec().token_type_ids`.
        """
        ...


def encoder_only_contract(spec: EncoderSpec) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if spec.token_type_ids else [])
    inputs = {name: TensorSpec(name, "int64", [B, S]) for name in names}
    if spec.task == FEATURE_EXTRACTION:
        return inputs, {"last_hidden_state": TensorSpec("last_hidden_state", "float32", [B, S, "d_model"])}
    return inputs, {"logits": TensorSpec("logits", "float32", [B, "num_labels"])}


class EncoderOnlyComponent(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) → last_hidden_state or logits."""

    def __init__(self, adapter: EncoderOnlyAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        if isinstance(getattr(adapter, "model", None), nn.Module):
            self.model = adapter.model  # registers the weights so export sees parameters

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.adapter.encode(input_ids, attention_mask, token_type_ids).float()


def _batch(spec: EncoderSpec, lengths: list[int], gen: torch.Generator) -> list[torch.Tensor]:
    """Right-padded random ids (special ids avoided), mask and, if the graph takes them, zero types."""
    low = max([spec.pad, spec.bos or 0, spec.unk or 0, *spec.eos]) + 1
    ids = torch.randint(low, spec.vocab_size, (len(lengths), max(lengths)), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = spec.pad
    return [ids, mask] + ([torch.zeros_like(ids)] if spec.token_type_ids else [])


def export_encoder_only(adapter: EncoderOnlyAdapter, spec: EncoderSpec, folder: Path) -> Component:
    """Export the adapter's `encode` to folder/encoder.onnx.

    Raises:
        ExportError: torch.onnx could not export the module.
    """
    inputs, outputs = encoder_only_contract(spec)
    example = _batch(spec, [5, 3], torch.Generator().manual_seed(0))  # sizes >= 2: see pipeline
    dyn = tuple(dynamic_axes(inputs[name]) for name in inputs)
    path = folder / "encoder.onnx"
    export_component(EncoderOnlyComponent(adapter), tuple(example), dyn, inputs, outputs, 0, path)
    return Component(file=path.name, sha256=sha256_of(path), inputs=inputs, outputs=outputs)


@torch.inference_mode()
def validate_encoder_only(
    adapter: EncoderOnlyAdapter,
    folder: Path,
    component: Component,
    options: RuntimeOptions | None = None,
    scale: float = 1.0,
) -> Validation:
    """Compare onnxruntime with PyTorch on batch 1 and a padded batch 3 (lengths 11, 6, 3),
    within atol + rtol · max|torch| per dtype times `scale` (export/validate.py).

    Raises:
        ParityError: naming the output, case and max abs diff of every failure.
    """
    spec = adapter.spec()
    signature = Signature(component, 0, {})
    runtime = open_runtime(folder / component.file, options or RuntimeOptions())
    (output,) = component.outputs
    dtype = component.outputs[output].dtype
    recorder = _Recorder(scale)
    gen = torch.Generator().manual_seed(1234)
    worst, cases = 0.0, []
    for lengths in ([7], [11, 6, 3]):
        tensors = _batch(spec, lengths, gen)
        expected = adapter.encode(*tensors[:2], tensors[2] if spec.token_type_ids else None).float().numpy()
        values = dict(zip(signature.inputs, (t.numpy() for t in tensors)))
        ours = signature.by_logical(runtime.run(signature.feeds(values)))[output]
        diff = max_abs_diff(ours, expected)
        cases.append(f"encoder batch={len(lengths)} padded")
        worst = max(worst, diff)
        recorder.check(f"encoder.{output} [{cases[-1]}]", diff, expected, dtype)
    raise_failures(recorder, "exported components")
    return validation_record({"encoder": {output: worst}}, cases, scale)


def read_sentence_transformers(folder: Path, d_model: int) -> tuple[Pooling, int | None]:
    """The pooling (and max_seq_length) a sentence-transformers folder declares in modules.json.

    A plain model folder gets mean pooling without normalisation (sentence-transformers' default).

    Returns:
        (pooling, max_seq_length or None).

    Raises:
        ExportError: a module or pooling mode seqport cannot run (Dense, weighted mean, ...).
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        logger.info("%s has no modules.json: embeddings use mean pooling, not normalised", folder)
        return Pooling(modes=["mean"], normalize=False, dimension=d_model), None
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    unknown = sorted(set(kinds) - set(_ST_MODULES))
    if unknown:
        raise ExportError(
            f"{modules_file} lists modules seqport cannot export: {', '.join(unknown)}; "
            f"supported modules are: {', '.join(_ST_MODULES)}"
        )
    modes = ["mean"]
    if "Pooling" in kinds:
        config = json.loads((folder / kinds["Pooling"] / "config.json").read_text(encoding="utf-8"))
        others = sorted(k for k, on in config.items() if k.startswith("pooling_mode_") and on and k not in _ST_MODES)
        if others:
            raise ExportError(
                f"pooling {', '.join(others)} is not supported; supported pooling modes are: {', '.join(POOLING_MODES)}"
            )
        modes = [mode for key, mode in _ST_MODES.items() if config.get(key)]
        if not modes:
            raise ExportError(f"{folder / kinds['Pooling']}/config.json switches on no pooling mode")
    max_seq_length = None
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq_length = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
    return Pooling(modes=modes, normalize="Normalize" in kinds, dimension=d_model * len(modes)), max_seq_length
