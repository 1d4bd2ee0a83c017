"""The export gate: magnitude-scaled tolerances, the `tolerance` option, the real-text check."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from seqport.engine.errors import ExportError, ParityError  # noqa: E402


def test_bound_is_atol_plus_rtol_times_the_reference_magnitude():
    from seqport.export.validate import RTOLERANCES, TOLERANCES, bound

    assert bound("float32", 0.0) == TOLERANCES["float32"] == 1e-4
    assert bound("float32", 20.0) == pytest.approx(1e-4 + 20.0 * RTOLERANCES["float32"])
    assert bound("float32", 20.0, scale=3.0) == pytest.approx(3 * (1e-4 + 20.0 * RTOLERANCES["float32"]))
    assert bound("float16", 1.0) > bound("float32", 1.0)


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "2", True])
def test_tolerance_must_be_a_positive_number(tmp_path, tiny_checkpoint, value):
    from seqport.export.pipeline import export_model

    with pytest.raises(ExportError, match="tolerance must be a positive number"):
        export_model(tiny_checkpoint, tmp_path / "out", progress=False, tolerance=value)


def test_tight_tolerance_fails_naming_the_figure_and_the_option_that_accepts_it(tmp_path, tiny_checkpoint):
    """tolerance=1e-6 makes the bound ~1e-10: the error names figures, then the exact option value
    that accepts them, and exporting with that value passes."""
    from seqport.export.pipeline import export_model

    with pytest.raises(ParityError) as failure:
        export_model(tiny_checkpoint, tmp_path / "out", progress=False, tolerance=1e-6)
    message = str(failure.value)
    figure = r"decoder\.logits \[batch=1 past=0 .*\]: max abs diff \S+ > tolerance \S+ \(atol 1e-10 \+ rtol"
    assert re.search(figure, message)
    assert not (tmp_path / "out" / "seqport.json").exists()
    suggested = re.search(r"seqport export --tolerance (\S+)` \(export_model\(\.\.\., tolerance=(\S+)\)\)", message)
    assert suggested and suggested.group(1) == suggested.group(2)
    manifest = export_model(tiny_checkpoint, tmp_path / "out", progress=False, tolerance=float(suggested.group(1)))
    assert manifest.validation.scale == float(suggested.group(1))


def test_manifest_records_tolerances_and_the_real_text_check(fresh_export):
    """The tiny model keeps fp32's strict figures: atol 1e-4, every greedy id equal, top-k all agree."""
    from seqport.engine.manifest import load_manifest
    from seqport.export.text_check import SENTENCES, STEPS, TOP_K

    v = load_manifest(fresh_export[1]).validation
    assert v.tolerance["float32"] == 1e-4 and v.rtol["float32"] == 1e-4 and v.scale == 1.0
    assert max(max(outputs.values()) for outputs in v.max_abs_diff.values()) <= 1e-4
    text = v.text
    assert text is not None and text.prompts == list(SENTENCES)
    assert (text.steps, text.top_k) == (STEPS, TOP_K)
    assert text.greedy_equal == len(SENTENCES) and text.near_ties == 0
    assert text.top_k_agreement == 1.0 and 0 < text.max_abs_diff <= 1e-4


def test_decoder_only_real_text_check(tmp_path):
    """A tiny GPT-2 with the GPT-2 byte-level tokenizer shape: the check runs and passes strictly."""
    pytest.importorskip("transformers")
    from test_hf_causal import _write_checkpoint

    from seqport.export.pipeline import export_model

    manifest = export_model(_write_checkpoint("gpt2", tmp_path / "ckpt"), tmp_path / "out", progress=False)
    text = manifest.validation.text
    assert text is not None and text.greedy_equal + text.near_ties == len(text.prompts) > 0
    assert text.top_k_agreement >= 0.99 and text.max_abs_diff <= 1e-4


class _Recorder:
    scale, needed = 1.0, 0.0

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, label, diff, expected, dtype) -> bool:
        return True


def test_a_greedy_split_is_a_near_tie_only_within_the_logits_tolerance():
    from seqport.export.text_check import _Tally

    tally = _Tally(_Recorder())
    ref = np.array([0.0, 5.0, 5.0 - 1e-4, -3.0], dtype=np.float32)  # bound: 1e-4 + 1e-4 · 5
    assert tally.next_tokens("p", ref, ref) == 1
    assert tally.next_tokens("p", np.array([0.0, 5.0, 5.1, -3.0]), ref) is None
    assert tally.ties == 1 and not tally.recorder.failures
    far = np.array([0.0, 5.0, 4.0, -3.0], dtype=np.float32)
    assert tally.next_tokens("q", np.array([0.0, 5.0, 5.1, -3.0]), far) is None
    assert tally.ties == 1
    expected = r"text\.greedy \[q\]: onnxruntime picks id 2, PyTorch id 1, whose logit is higher by 1 >"
    assert re.match(expected, tally.recorder.failures[0])


def test_low_top_k_agreement_fails():
    from seqport.export.text_check import _Tally

    tally = _Tally(_Recorder())
    ref = np.arange(12, dtype=np.float32)[None]  # top-5: 11..7
    tally.logits("p", -ref, ref)  # onnxruntime's top-5 is the bottom 5: overlap 0
    record = tally.result(["p"])
    assert record.top_k_agreement == 0.0
    assert tally.recorder.failures == ["text.top_5_agreement: 0.000 < 0.900"]
