"""Validation is part of export: every component against PyTorch on several inputs.

Cases cover batch 1 and 3, padded sources, and past lengths 0, 1 and 7. The largest
|onnxruntime - torch| per output goes into the manifest; over tolerance, export fails. An
output's tolerance grows with its magnitude: atol + rtol · max|torch| per dtype, both times the
export's `tolerance` scale (1 by default). Logits of magnitude ~20 after 30 fp32 layers differ
by ~1e-3 between two correct kernels (issue #13), while a tiny model's stay within 1e-4.
Then export/text_check.py decodes real sentences greedily in both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqport.engine.errors import ExportError, ParityError
from seqport.engine.feeds import Signature
from seqport.engine.inputs import plain_id_range
from seqport.engine.manifest import Component, Validation
from seqport.engine.runtime import RuntimeOptions, open_runtime
from seqport.export.adapter import KV, EncoderDecoderAdapter, ModelSpec
from seqport.export.causal import positions_from_mask
from seqport.export.decoder_state import decode, position_feed, state_values
from seqport.export.prealloc_feeds import as_buffers, blank_pads

#: max |ort - torch| allowed per output dtype at magnitude 0 (fp32: 1e-4, as promised in the README).
TOLERANCES = {"float32": 1e-4, "float16": 2e-2}
#: what each unit of max |torch| adds to it (fp32 logits of magnitude 20: 1e-4 + 20 · 1e-4 = 2.1e-3).
RTOLERANCES = {"float32": 1e-4, "float16": 1e-3}


def bound(dtype: str, reference_max: float, scale: float = 1.0) -> float:
    """The largest |ort - torch| an output of `dtype` whose |torch| reaches `reference_max` may show."""
    return scale * (TOLERANCES.get(dtype, TOLERANCES["float32"]) + RTOLERANCES.get(dtype, 0.0) * reference_max)


def check_scale(scale: float) -> float:
    """The export's `tolerance` option: a positive multiplier of every stated tolerance."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise ExportError(f"tolerance must be a positive number (a multiplier of the stated tolerances), got {scale!r}")
    return float(scale)


def tolerance_hint(needed: float) -> str:
    """How to accept figures that need a scale of `needed`: the option, on the CLI and in the API."""
    value = float(f"{needed * 1.05:.2g}")  # two significant digits, rounded up past the figure
    value = value if value >= needed else float(f"{needed * 1.2:.2g}")
    return (
        f"if the model's outputs are right, accept these figures with `seqport export --tolerance {value:g}` "
        f"(export_model(..., tolerance={value:g})); it multiplies every stated tolerance"
    )


def validation_record(worst, cases, scale: float, text=None) -> Validation:
    """The manifest's validation section: figures, cases and the tolerances that were applied."""
    return Validation(
        tolerance={k: v * scale for k, v in TOLERANCES.items()},
        max_abs_diff=worst,
        cases=cases,
        rtol={k: v * scale for k, v in RTOLERANCES.items()},
        scale=scale,
        text=text,
    )


def raise_failures(recorder: _Recorder, what: str) -> None:
    """One ParityError naming every failed figure, and the --tolerance that would accept them."""
    if recorder.failures:
        figures = "\n  - ".join(recorder.failures)
        raise ParityError(f"{what} disagree with PyTorch:\n  - {figures}\n{tolerance_hint(recorder.needed)}")


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
    """[low, high) between the model's special ids (engine/inputs.py plain_id_range)."""
    return plain_id_range([*spec.eos, spec.pad, spec.bos, spec.unk], spec.vocab_size)


def _np(tensors) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in tensors]


def _kv_values(prefix: str, pairs: list[KV]) -> dict[str, np.ndarray]:
    values = {}
    for i, (k, v) in enumerate(pairs):
        values[f"{prefix}_key.{i}"], values[f"{prefix}_value.{i}"] = _np((k, v))
    return values


class _Recorder:
    """Worst |ort - torch| per component output, and every figure over its bound."""

    def __init__(self, scale: float = 1.0) -> None:
        self.worst: dict[str, dict[str, float]] = {}
        self.failures: list[str] = []
        self.scale = scale
        self.needed = 0.0  # the smallest scale that would accept every figure seen

    def compare(self, component: str, case: str, ours: dict, theirs: dict, signature) -> None:
        table = self.worst.setdefault(component, {})
        for logical, expected in theirs.items():
            name = logical.split(".")[0]  # one figure per output family: present_key.{i} → present_key
            diff = max_abs_diff(ours[logical], expected)
            table[name] = max(table.get(name, 0.0), diff)
            self.check(f"{component}.{logical} [{case}]", diff, expected, signature.outputs[logical].dtype)

    def check(self, label: str, diff: float, expected: np.ndarray, dtype: str) -> bool:
        """Record a failure when `diff` exceeds the bound for `expected`'s magnitude; False then."""
        reference = float(np.max(np.abs(expected), initial=0.0))
        tol = bound(dtype, reference, self.scale)
        self.needed = max(self.needed, self.scale * diff / tol)
        if diff <= tol:
            return True
        atol, rtol = self.scale * TOLERANCES.get(dtype, 1e-4), self.scale * RTOLERANCES.get(dtype, 0.0)
        self.failures.append(
            f"{label}: max abs diff {diff:.3g} > tolerance {tol:.3g} "
            f"(atol {atol:g} + rtol {rtol:g} × max|torch| {reference:.3g})"
        )
        return False


def max_abs_diff(ours: np.ndarray, expected: np.ndarray) -> float:
    """max |ours - expected| in float64; NaN or overflow anywhere → inf."""
    diff = float(np.max(np.abs(ours.astype(np.float64) - expected), initial=0.0))
    return diff if np.isfinite(diff) else float("inf")


@torch.inference_mode()
def validate(
    adapter: EncoderDecoderAdapter,
    folder: Path,
    components: dict[str, Component],
    fixed: dict[str, int],
    options: RuntimeOptions | None = None,
    allocation: str = "growing",
    text_check: Callable | None = None,
    scale: float = 1.0,
) -> Validation:
    """Run PyTorch and onnxruntime on the validation cases, then greedy decoding of real text
    (`text_check`, built by export/text_check.real_text_check); raise if any figure is off.

    PyTorch always runs the growing cache, so a preallocated graph is checked against the
    model's own semantics, not against a second copy of the scatter (see `_PreallocatedFeeds`).

    Args:
        text_check: (adapter, signatures, runtimes, allocation, recorder) -> TextCheck, or None
            (no real-text check). Injected, so this module does not import text_check.py, which
            builds on it.
        scale: the export's `tolerance` option, a multiplier of every stated tolerance.

    Raises:
        ParityError: naming the component, output, case and figures of every failure.
    """
    spec = adapter.spec()
    options = options or RuntimeOptions()
    sigs = {name: Signature(c, spec.num_layers, fixed) for name, c in components.items()}
    runtimes = {name: open_runtime(folder / c.file, options) for name, c in components.items()}
    recorder = _Recorder(scale)
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
                adapter, spec, case, mask, cross, gen, sigs["decoder"], runtimes["decoder"], recorder, allocation
            )
    raise_failures(recorder, "exported components")
    text = None
    if text_check is not None:
        text = text_check(adapter, sigs, runtimes, allocation, recorder)
        raise_failures(recorder, "exported components")
    cases = [f"encoder batch={b} padded" for b in (1, 3)] + [c.label for c in DECODER_CASES]
    return validation_record(recorder.worst, cases, scale, text)


def _check_decoder(adapter, spec, case: Case, mask, cross, gen, signature, runtime, recorder, allocation) -> None:
    low, high = _plain_ids(spec)
    past = adapter.empty_past(case.batch)  # the declared initial state (decoder_state.py)
    rows_feed = "attention_mask" in signature.inputs  # per-row positions and mask (continuous batching)
    before, rows = _row_steps(case) if rows_feed else ({}, {})
    if case.past:
        prefix = torch.randint(low, high, (case.batch, case.past), generator=gen)
        if rows_feed:
            _, past = adapter.decode_step(prefix, mask, cross, past, **before)
        else:
            _, past = decode(adapter, prefix, mask, cross, past, 0)
    new_ids = torch.randint(low, high, (case.batch, case.new), generator=gen)
    keep = torch.arange(case.new) if case.all_logits else torch.tensor([case.new - 1])
    if rows_feed:
        hidden, present = adapter.decode_step(new_ids, mask, cross, past, **rows)
    else:
        hidden, present = decode(adapter, new_ids, mask, cross, past, case.past)
    logits = adapter.logits(hidden.index_select(1, keep)).float()
    theirs = {"logits": logits.numpy(), **state_values("present", present, spec)}
    values = {
        "input_ids": new_ids.numpy(),
        "encoder_attention_mask": mask.numpy(),
        "logits_positions": keep.numpy(),
        **_kv_values("cross", cross),
        **state_values("past", past, spec),
    }
    if rows_feed:
        values.update({name: value.numpy() for name, value in rows.items()})
    else:  # position_ids when the graph takes them (a preallocated graph of a row_positions adapter does not)
        feed = position_feed(adapter, case.past, tuple(new_ids.shape))
        values.update({name: value for name, value in feed.items() if name in signature.inputs})
    ours = _run_decoder(signature, runtime, values, case, allocation, recorder)
    recorder.compare("decoder", case.label, ours, theirs, signature)


def _row_steps(case: Case) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """position_ids and attention_mask of the past and of the new tokens for a decoder that takes
    them: row r joined 2r steps late, so its first min(2r, P) past slots are masked padding."""
    pads = torch.clamp(torch.arange(case.batch) * 2, max=case.past)[:, None]  # (B, 1)
    slots = torch.arange(case.past + case.new)[None, :]  # (1, P+T)
    mask = (slots >= pads).long()  # (B, P+T)
    positions = torch.clamp(slots - pads, min=0)  # (B, P+T)
    past = {"position_ids": positions[:, : case.past], "attention_mask": mask[:, : case.past]}
    return past, {"position_ids": positions[:, case.past :], "attention_mask": mask}


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
    allocation: str = "growing",
    attention: str = "portable",
    text_check=None,
    scale: float = 1.0,
    release: Callable[[], None] | None = None,
) -> Validation:
    """Run a decoder-only model's `decoder` in PyTorch and onnxruntime on DECODER_ONLY_CASES
    (a preallocated graph against PyTorch's growing cache, as in `validate`; a fused graph
    against the adapter's portable attention), then greedy decoding of real prompts
    (`text_check`: export/text_check.DecoderOnlyTextCheck; `scale` as in `validate`).

    PyTorch runs first, every case and the text check's decoding, then `release` (if given)
    lets the PyTorch weights go, and only then does onnxruntime load the graph's. (After
    torch.onnx export, torch itself still holds most parameters' storage: on SmolLM2 the
    release frees ~0.1 of the 0.54 GB; see docs/real-models.md.)

    Raises:
        ParityError: naming the output, case and figures of every failure.
    """
    spec = adapter.spec()
    gen = torch.Generator().manual_seed(1234)
    references = [_decoder_only_reference(adapter, spec, case, gen) for case in DECODER_ONLY_CASES]
    text_references = text_check.reference(adapter) if text_check is not None else None
    if release is not None:
        release()
    signature = Signature(components["decoder"], spec.num_layers, fixed)
    runtime = open_runtime(folder / components["decoder"].file, options or RuntimeOptions())
    recorder, labels = _Recorder(scale), []
    for case, (values, theirs) in zip(DECODER_ONLY_CASES, references):
        ours = _run_decoder(signature, runtime, values, case, allocation, recorder, in_place=attention == "fused")
        if allocation == "preallocated" or attention == "fused":  # a left-pad query attends to nothing:
            keep = values["logits_positions"]  # its output is unspecified
            blank_pads(ours, theirs, values["attention_mask"], case.past + keep)
        labels.append(case.label + (" left-padded" if case.batch > 1 else ""))
        recorder.compare("decoder", labels[-1], ours, theirs, signature)
    raise_failures(recorder, "exported decoder outputs")
    text = None
    if text_check is not None:
        text = text_check.compare(text_references, signature, runtime, allocation, recorder)
        raise_failures(recorder, "exported decoder outputs")
    return validation_record(recorder.worst, labels, scale, text)


@torch.inference_mode()
def _decoder_only_reference(adapter, spec: ModelSpec, case: Case, gen: torch.Generator) -> tuple[dict, dict]:
    """One case in PyTorch: the decoder's feeds (logical names) and PyTorch's outputs."""
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
    return values, theirs


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


def _run_decoder(
    signature, runtime, values: dict, case: Case, allocation: str, recorder, in_place: bool = False
) -> dict[str, np.ndarray]:
    """Run the exported decoder on growing-cache `values`; a preallocated graph gets them as
    buffers (see prealloc_feeds.as_buffers) and its present buffers come back cut to P+T slots. `in_place`:
    each present buffer is bound to its past one, as the engine does (a fused graph's
    GroupQueryAttention writes only the new slots, and only when the two are one buffer)."""
    if allocation != "preallocated":
        return signature.by_logical(runtime.run(signature.feeds(values)))
    values, spare = as_buffers(values, case)
    feeds = signature.feeds(values)
    into = {signature.outputs[name].name: feeds[signature.inputs[name.replace("present_", "past_", 1)].name]
            for name in spare} if in_place else {}  # fmt: skip
    ours = signature.by_logical(runtime.run(feeds, into=into) if into else runtime.run(feeds))
    written = case.past + case.new
    for name, noise in spare.items():
        if not np.array_equal(ours[name][:, :, written:], noise):
            recorder.failures.append(f"decoder.{name} [{case.label}]: slots after the new tokens were changed")
        ours[name] = ours[name][:, :, :written]
    return ours


#: `_run_decoder` for export/text_check.py: bound once, so a test spying on this module's
#: validation cases (tests/test_validation_cases.py patches `_run_decoder`) sees only those.
run_decoder = _run_decoder
