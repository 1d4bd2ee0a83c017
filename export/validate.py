"""Validation is part of export: every component against PyTorch on several inputs.

Cases cover batch 1 and 3, padded sources, and past lengths 0, 1 and 7. The largest
|onnxruntime - torch| per output goes into the manifest; over tolerance, export fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqport.engine.errors import ParityError
from seqport.engine.feeds import Signature
from seqport.engine.manifest import Component, Validation
from seqport.engine.runtime import RuntimeOptions, open_runtime
from seqport.export.adapter import KV, EncoderDecoderAdapter, ModelSpec
from seqport.export.causal import positions_from_mask

#: max |ort - torch| allowed per output dtype (fp32 logits: 1e-4, as promised in the README).
TOLERANCES = {"float32": 1e-4, "float16": 2e-2}


@dataclass(frozen=True)
class Case:
    batch: int
    past: int
    new: int
    all_logits: bool = False

    @property
    def label(self) -> str:
        keep = "all" if self.all_logits else "last"
        return f"batch={self.batch} past={self.past} new={self.new} logits={keep}"


DECODER_CASES = (
    Case(1, 0, 1),
    Case(1, 1, 1),
    Case(1, 7, 1),
    Case(3, 0, 1),
    Case(3, 1, 1),
    Case(3, 7, 2),
    Case(3, 0, 5, all_logits=True),
)


def _sources(spec: ModelSpec, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random sources; with batch > 1 the rows have different lengths."""
    lengths = [11, 6, 3][:batch] if batch > 1 else [7]
    low, high = _plain_ids(spec)
    ids = torch.randint(low, high, (batch, max(lengths)), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = spec.pad or 0
    return ids, mask


def _plain_ids(spec: ModelSpec) -> tuple[int, int]:
    """[low, high) between the special ids: specials at the start (most families) and at the
    end of the vocabulary (Marian's pad is its last id) stay out of random inputs."""
    specials = {i for i in spec.eos + [spec.pad, spec.bos, spec.unk] if i is not None}
    high = spec.vocab_size
    while high - 1 in specials:
        high -= 1
    return max([i for i in specials if i < high], default=-1) + 1, high


def _np(tensors) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in tensors]


def _kv_values(prefix: str, pairs: list[KV]) -> dict[str, np.ndarray]:
    values = {}
    for i, (k, v) in enumerate(pairs):
        values[f"{prefix}_key.{i}"], values[f"{prefix}_value.{i}"] = _np((k, v))
    return values


class _Recorder:
    def __init__(self, tolerance_of: Callable[[str], float]) -> None:
        self.worst: dict[str, dict[str, float]] = {}
        self.failures: list[str] = []
        self._tolerance_of = tolerance_of

    def compare(self, component: str, case: str, ours: dict, theirs: dict, signature) -> None:
        table = self.worst.setdefault(component, {})
        for logical, expected in theirs.items():
            name = logical.split(".")[0]  # one figure per output family: present_key.{i} → present_key
            diff = float(np.max(np.abs(ours[logical].astype(np.float64) - expected)))
            if not np.isfinite(diff):
                diff = float("inf")
            table[name] = max(table.get(name, 0.0), diff)
            tol = self._tolerance_of(signature.outputs[logical].dtype)
            if diff > tol:
                self.failures.append(
                    f"{component}.{logical} [{case}]: max abs diff {diff:.3g} > tolerance {tol:g}"
                )


@torch.inference_mode()
def validate(
    adapter: EncoderDecoderAdapter,
    folder: Path,
    components: dict[str, Component],
    fixed: dict[str, int],
    options: RuntimeOptions | None = None,
) -> Validation:
    """Run PyTorch and onnxruntime on the validation cases; raise if any output is off.

    Raises:
        ParityError: naming the component, output, case and figures of every failure.
    """
    spec = adapter.spec()
    options = options or RuntimeOptions()
    sigs = {name: Signature(c, spec.num_layers, fixed) for name, c in components.items()}
    runtimes = {name: open_runtime(folder / c.file, options) for name, c in components.items()}
    recorder = _Recorder(lambda dtype: TOLERANCES.get(dtype, 1e-4))
    gen = torch.Generator().manual_seed(1234)
    for batch in (1, 3):
        ids, mask = _sources(spec, batch, gen)
        hidden, cross = adapter.encode(ids, mask)
        theirs = {"encoder_hidden_states": hidden.float().numpy(), **_kv_values("cross", cross)}
        feeds = sigs["encoder"].feeds({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        ours = sigs["encoder"].by_logical(runtimes["encoder"].run(feeds))
        recorder.compare("encoder", f"batch={batch} padded", ours, theirs, sigs["encoder"])
        for case in (c for c in DECODER_CASES if c.batch == batch):
            _check_decoder(
                adapter, spec, case, mask, cross, gen, sigs["decoder"], runtimes["decoder"], recorder
            )
    if recorder.failures:
        raise ParityError(
            "exported components disagree with PyTorch:\n  - " + "\n  - ".join(recorder.failures)
        )
    return Validation(
        tolerance={k: v for k, v in TOLERANCES.items()},
        max_abs_diff=recorder.worst,
        cases=[f"encoder batch={b} padded" for b in (1, 3)] + [c.label for c in DECODER_CASES],
    )


def _check_decoder(adapter, spec, case: Case, mask, cross, gen, signature, runtime, recorder) -> None:
    low, high = _plain_ids(spec)
    past = adapter.empty_past(case.batch)
    if case.past:
        prefix = torch.randint(low, high, (case.batch, case.past), generator=gen)
        _, past = adapter.decode_step(prefix, mask, cross, past)
    new_ids = torch.randint(low, high, (case.batch, case.new), generator=gen)
    keep = torch.arange(case.new) if case.all_logits else torch.tensor([case.new - 1])
    hidden, present = adapter.decode_step(new_ids, mask, cross, past)
    logits = adapter.logits(hidden.index_select(1, keep)).float()
    theirs = {"logits": logits.numpy(), **_kv_values("present", present)}
    values = {
        "input_ids": new_ids.numpy(),
        "encoder_attention_mask": mask.numpy(),
        "logits_positions": keep.numpy(),
        **_kv_values("cross", cross),
        **_kv_values("past", past),
    }
    ours = signature.by_logical(runtime.run(signature.feeds(values)))
    recorder.compare("decoder", case.label, ours, theirs, signature)


#: decoder-only: batch 1 and 3 (rows left-padded by 0, 3 and 5), past lengths 0, 1 and 7.
DECODER_ONLY_CASES = (
    Case(1, 0, 1),
    Case(1, 1, 1),
    Case(1, 7, 1),
    Case(3, 0, 5, all_logits=True),
    Case(3, 1, 1),
    Case(3, 7, 2),
)


@torch.inference_mode()
def validate_decoder_only(
    adapter,
    folder: Path,
    components: dict[str, Component],
    fixed: dict[str, int],
    options: RuntimeOptions | None = None,
) -> Validation:
    """Run a decoder-only model's `decoder` in PyTorch and onnxruntime on DECODER_ONLY_CASES.

    Raises:
        ParityError: naming the output, case and figures of every failure.
    """
    spec = adapter.spec()
    signature = Signature(components["decoder"], spec.num_layers, fixed)
    runtime = open_runtime(folder / components["decoder"].file, options or RuntimeOptions())
    recorder = _Recorder(lambda dtype: TOLERANCES.get(dtype, 1e-4))
    gen = torch.Generator().manual_seed(1234)
    labels = []
    for case in DECODER_ONLY_CASES:
        ids, mask = _left_padded(spec, case.batch, case.past + case.new, gen)
        positions = positions_from_mask(mask)
        past = adapter.empty_past(case.batch)
        if case.past:
            prefix = slice(0, case.past)
            _, past = adapter.decode_step(ids[:, prefix], mask[:, prefix], positions[:, prefix], past)
        new = slice(case.past, None)
        keep = torch.arange(case.new) if case.all_logits else torch.tensor([case.new - 1])
        hidden, present = adapter.decode_step(ids[:, new], mask, positions[:, new], past)
        theirs = {"logits": adapter.logits(hidden.index_select(1, keep)).float().numpy()}
        theirs.update(_kv_values("present", present))
        values = {"input_ids": ids[:, new].numpy(), "attention_mask": mask.numpy()}
        values.update({"position_ids": positions[:, new].numpy(), "logits_positions": keep.numpy()})
        values.update(_kv_values("past", past))
        ours = signature.by_logical(runtime.run(signature.feeds(values)))
        labels.append(case.label + (" left-padded" if case.batch > 1 else ""))
        recorder.compare("decoder", labels[-1], ours, theirs, signature)
    if recorder.failures:
        raise ParityError("exported decoder disagrees with PyTorch:\n  - " + "\n  - ".join(recorder.failures))
    return Validation(tolerance=dict(TOLERANCES), max_abs_diff=recorder.worst, cases=labels)


def _left_padded(spec: ModelSpec, batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts (B, L); with batch > 1, rows 1 and 2 are left-padded (each keeps ≥ 1 token)."""
    low, high = _plain_ids(spec)  # GPT-2's <|endoftext|> is its last id
    ids = torch.randint(low, high, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for row, pads in enumerate([0, 3, 5][:batch]):
        pads = min(pads, length - 1)
        mask[row, :pads] = 0
        ids[row, :pads] = spec.pad or 0
    return ids, mask
