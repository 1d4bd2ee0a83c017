"""`seqport export --optimize` on GPT-2 whose linear biases are all zero (randomly initialised
checkpoints, such as the benchmark's): the exporter drops those biases, leaving Gemms without a C
input that onnxruntime's gpt2 patterns crash on; the export falls back to the bert patterns, keeps
the fusions, passes its re-validation and generates the same tokens as the plain export."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
transformers = pytest.importorskip("transformers")

from test_validation_cases import DECODER_ONLY_CASES  # noqa: E402

import seqport.engine as sp  # noqa: E402
from seqport.engine.manifest import load_manifest  # noqa: E402

PROMPTS = ["the small red house where the cat sat on", "a dog ran in the park", "numbers"]


def _zero_bias_gpt2(folder):
    """The tiny GPT-2 of test_hf_causal (widened so outputs vary) with every Conv1D bias zeroed."""
    from test_hf_causal import _write_checkpoint

    _write_checkpoint("gpt2", folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("c_attn.bias", "c_proj.bias", "c_fc.bias")):
                param.zero_()
    model.save_pretrained(folder)
    return folder


def _export(checkpoint, out, *flags) -> str:
    """`seqport export` through the CLI entry point; what it printed."""
    from seqport.cli.main import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(checkpoint), str(out), "-q", *flags]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(plain artifact, optimized artifact, what `--optimize` printed) of one zero-bias GPT-2."""
    root = tmp_path_factory.mktemp("gpt2_zero_bias")
    checkpoint = _zero_bias_gpt2(root / "checkpoint")
    _export(checkpoint, root / "plain")
    printed = _export(checkpoint, root / "optimized", "--optimize")
    return root / "plain", root / "optimized", printed


def _gemm_inputs(path) -> list[int]:
    return [len(node.input) for node in onnx.load(str(path)).graph.node if node.op_type == "Gemm"]


def test_the_plain_export_has_biasless_gemms(exports):
    """The case this file guards: without it the test below would exercise the gpt2 patterns."""
    plain, _, _ = exports
    assert _gemm_inputs(plain / "decoder.onnx") and set(_gemm_inputs(plain / "decoder.onnx")) == {2}


def test_optimized_zero_bias_gpt2_records_its_fusions(exports):
    from seqport.export.validate import TOLERANCES

    plain, optimized, printed = exports
    manifest = load_manifest(optimized)
    record = manifest.optimization
    assert record is not None and record.model_type == "bert"
    assert record.tool.startswith("onnxruntime.transformers")
    assert record.fusions["decoder"].get("SkipLayerNormalization", 0) > 0, record.fusions
    assert record.fusions["decoder"].get("FastGelu", 0) > 0, record.fusions
    ops = {node.op_type for node in onnx.load(str(optimized / "decoder.onnx")).graph.node}
    assert {"SkipLayerNormalization", "FastGelu"} <= ops
    assert record.validation.cases == manifest.validation.cases == DECODER_ONLY_CASES  # re-run on every case
    for outputs in record.validation.max_abs_diff.values():
        assert max(outputs.values()) <= TOLERANCES["float32"]
    assert "optimized decoder" in printed and "bert patterns" in printed


def test_optimized_zero_bias_gpt2_generates_the_plain_tokens(exports):
    """Greedy on a left-padded batch: same ids, log-probs within 1e-4 (sha256 checked on load)."""
    plain, optimized, _ = exports
    reference, fused = sp.load(plain), sp.load(optimized)
    expected = reference.generate(PROMPTS, max_new_tokens=10)
    results = fused.generate(PROMPTS, max_new_tokens=10)
    assert len({tuple(r.ids) for r in expected}) > 1, "outputs should vary"
    for a, b in zip(expected, results):
        assert a.ids == b.ids
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)


def _gemm_graph(path, with_bias: bool) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.ones((2, 2), np.float32), "w")]
    inputs = ["x", "w"]
    if with_bias:
        weights.append(numpy_helper.from_array(np.zeros(2, np.float32), "b"))
        inputs.append("b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", inputs, ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        weights,
    )
    onnx.save(helper.make_model(graph), str(path))


def test_gpt2_patterns_are_kept_where_every_gemm_has_a_bias(tmp_path, caplog):
    from seqport.export.optimize import choose_model_type

    _gemm_graph(tmp_path / "biased.onnx", with_bias=True)
    _gemm_graph(tmp_path / "biasless.onnx", with_bias=False)
    assert choose_model_type("gpt2", [tmp_path / "biased.onnx"]) == "gpt2"
    assert not caplog.records
    assert choose_model_type("gpt2", [tmp_path / "biased.onnx", tmp_path / "biasless.onnx"]) == "bert"
    assert "crashes onnxruntime's gpt2 postprocess; using the bert patterns" in caplog.text  # logged, not silent
    assert choose_model_type("bart", [tmp_path / "biasless.onnx"]) == "bart"  # only gpt2's postprocess reads C
