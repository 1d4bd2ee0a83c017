"""`seqport export --optimize` / `--quantize int8`: the artifacts load, keep their contract,
pass the validation their manifests record, and a failed gate leaves nothing half-done."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from test_validation_cases import ENCODER_DECODER_CASES  # noqa: E402

import seqport.engine as sp  # noqa: E402
from seqport.engine.errors import ExportError, ParityError  # noqa: E402
from seqport.engine.manifest import load_manifest, sha256_of  # noqa: E402

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]


def _io(path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path)).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture
def fp32_copy(tiny_checkpoint, tiny_artifact, tmp_path):
    """(checkpoint, the committed fp32 artifact exported from it, a writable copy of that artifact)."""
    return tiny_checkpoint, tiny_artifact, shutil.copytree(tiny_artifact, tmp_path / "copy")


@pytest.fixture(scope="module")
def cli_export(tiny_checkpoint, tmp_path_factory):
    """`seqport export --optimize --quantize int8` once: (artifact folder, what it printed)."""
    import contextlib
    import io

    from seqport.cli.main import main

    out = tmp_path_factory.mktemp("cli") / "artifact"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(tiny_checkpoint), str(out), "-q", "--optimize", "--quantize", "int8"])
    assert code == 0
    return out, printed.getvalue()


def test_optimized_artifact_passes_its_recorded_validation(fp32_copy):
    from seqport.export.families import load_adapter
    from seqport.export.optimize import optimize_artifact, revalidate
    from seqport.export.validate import TOLERANCES

    checkpoint, fp32, folder = fp32_copy
    adapter = load_adapter(checkpoint)
    optimize_artifact(adapter, folder, load_manifest(folder)).save(folder)
    manifest = load_manifest(folder)
    record = manifest.optimization
    assert record.model_type == "bart" and record.tool.startswith("onnxruntime.transformers")
    for name in ("encoder", "decoder"):
        assert record.fusions[name].get("SkipLayerNormalization", 0) > 0, record.fusions
        assert "SkipLayerNormalization" in _ops(folder / f"{name}.onnx")
        assert _io(folder / f"{name}.onnx") == _io(fp32 / f"{name}.onnx")  # same contract
    assert record.validation.cases == manifest.validation.cases == ENCODER_DECODER_CASES  # re-run on every case
    again = revalidate(adapter, folder, manifest)  # what the manifest claims holds on a re-run
    for component, outputs in record.validation.max_abs_diff.items():
        for output, diff in outputs.items():
            assert diff <= TOLERANCES["float32"]
            assert again.max_abs_diff[component][output] == pytest.approx(diff, abs=1e-6)
    plain, fused = sp.load(fp32), sp.load(folder)  # sha256 of the fused files verified on load
    for a, b in zip(plain.generate(SOURCES, max_new_tokens=10), fused.generate(SOURCES, max_new_tokens=10)):
        assert a.ids == b.ids
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)


def test_int8_artifact_passes_its_recorded_agreement(fp32_copy):
    from seqport.export import quantize

    _, fp32, folder = fp32_copy
    quantize.quantize_artifact(folder, load_manifest(folder)).save(folder)
    manifest = load_manifest(folder)
    q = manifest.quantization
    assert q.method == "dynamic-int8" and q.op_types == ["MatMul"] and q.min_agreement == quantize.MIN_AGREEMENT
    assert q.token_agreement >= q.min_agreement
    assert set(q.candidates) == {"per_tensor", "per_channel"} and q.token_agreement == max(q.candidates.values())
    assert 0.0 <= q.sequence_match <= 1.0 and q.max_abs_diff["decoder"]["logits"] > 0
    assert q.quantized_nodes == {"encoder": 18, "decoder": 24}  # every weight MatMul, no activation MatMul
    for name in ("encoder", "decoder"):
        assert "MatMulInteger" in _ops(folder / f"{name}.onnx")
        assert _io(folder / f"{name}.onnx") == _io(fp32 / f"{name}.onnx")
        assert q.bytes[name][1] < q.bytes[name][0]
    reference, int8 = sp.load(fp32), sp.load(folder)
    sources = quantize._fit(reference.input_ids(quantize.SENTENCES), manifest)
    again = quantize._figures(reference, int8, sources)  # the recorded gate figure, re-measured
    assert again.token_agreement == pytest.approx(q.token_agreement, abs=1e-6)
    assert not list(folder.glob(".quantize-*"))


def test_failed_int8_gate_leaves_the_fp32_files(fp32_copy):
    from seqport.export.quantize import quantize_artifact

    _, _, folder = fp32_copy
    before = {p.name: sha256_of(p) for p in folder.glob("*.onnx")}
    with pytest.raises(
        ParityError, match=r"int8 components agree with fp32 on 0\.\d+ of greedy tokens .*gate is 1\.01"
    ):
        quantize_artifact(folder, load_manifest(folder), min_agreement=1.01)
    assert {p.name: sha256_of(p) for p in folder.glob("*.onnx")} == before
    assert not list(folder.glob(".quantize-*"))


def test_int8_needs_a_generating_artifact(fp32_copy):
    from seqport.export.quantize import quantize_artifact

    _, _, folder = fp32_copy
    manifest = dataclasses.replace(load_manifest(folder), architecture="encoder-only")
    with pytest.raises(ExportError, match="a encoder-only artifact does not generate; export it without --quantize"):
        quantize_artifact(folder, manifest)


def test_unknown_quantize_mode_fails_before_exporting(tiny_checkpoint, tmp_path):
    from seqport.export.pipeline import export_model

    with pytest.raises(ExportError, match="--quantize 'int3' is not supported; supported: int8, int4"):
        export_model(tiny_checkpoint, tmp_path / "out", progress=False, quantize="int3")
    assert not (tmp_path / "out").exists()


def test_cli_export_optimize_quantize(cli_export, tiny_artifact, capsys):
    from seqport.cli.main import main

    out, printed = cli_export
    assert "optimized decoder" in printed and "SkipLayerNormalization" in printed
    assert "greedy token agreement with fp32" in printed
    manifest = load_manifest(out)
    assert manifest.optimization is not None and manifest.quantization is not None
    assert manifest.quantization.token_agreement >= manifest.quantization.min_agreement
    assert {"SkipLayerNormalization", "MatMulInteger"} <= _ops(out / "decoder.onnx")  # fused, then quantized
    # the graph I/O of an unprocessed export (the committed tiny artifact predates the decoder's
    # optional per-row inputs for continuous batching and its greedy head, which today's exports add)
    row_inputs = ["decoder_position_ids", "decoder_attention_mask"]
    for name in ("encoder", "decoder"):
        inputs, outputs = _io(out / f"{name}.onnx")
        expected_inputs, expected_outputs = _io(tiny_artifact / f"{name}.onnx")
        if name == "decoder":
            expected_inputs = expected_inputs[:3] + row_inputs + expected_inputs[3:]
            expected_outputs = expected_outputs + ["greedy_ids", "greedy_logprobs"]
        assert (inputs, outputs) == (expected_inputs, expected_outputs)
    assert main(["info", str(out)]) == 0
    assert "quantized dynamic-int8" in capsys.readouterr().out
    results = sp.load(out).generate(SOURCES, max_new_tokens=5, min_new_tokens=5)
    assert [len(r.ids) for r in results] == [5, 5, 5]
