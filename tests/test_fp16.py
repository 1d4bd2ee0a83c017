"""`--dtype fp16` (export/fp16.py) on the committed tiny artifact: converted, gated, recorded."""

from __future__ import annotations

import dataclasses

import pytest

pytestmark = pytest.mark.export
pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import seqport.engine as sp  # noqa: E402
from seqport.engine.errors import ExportError  # noqa: E402
from seqport.engine.manifest import load_manifest  # noqa: E402
from seqport.export.fp16 import fp16_artifact  # noqa: E402


def test_fp16_components_pass_the_gate_and_are_recorded(artifact_copy):
    manifest = fp16_artifact(artifact_copy, load_manifest(artifact_copy))
    manifest.save(artifact_copy)
    record = manifest.quantization
    assert record.method == "fp16" and record.token_agreement >= record.min_agreement
    assert set(record.max_abs_diff) == {"encoder", "decoder"}
    graph = onnx.load(str(artifact_copy / "decoder.onnx")).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    types = {value.name: value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]}
    assert types["logits"] == onnx.TensorProto.FLOAT  # other float I/O kept float32
    assert types["past_key_values.0.decoder.key"] == types["present.0.decoder.key"] == onnx.TensorProto.FLOAT16
    assert manifest.kv.dtype == "float16" and manifest.components["decoder"].inputs["cross_key.{i}"].dtype == "float16"
    model = sp.load(artifact_copy)  # the sha256 of the fp16 files is in the manifest
    (result,) = model.generate([[10, 11, 12, 2]], max_new_tokens=6)
    device = sp.load(artifact_copy, options=sp.RuntimeOptions(device_loop=True))
    assert device.generate([[10, 11, 12, 2]], max_new_tokens=6)[0].ids == result.ids


def test_fp16_preallocated_cache_is_half_precision_and_agrees(tiny_checkpoint, tmp_path):
    """fp16 + preallocated: float16 buffers at the boundary, written in place, same ids as
    the growing fp16 export on the host and device loops."""
    from seqport.export.pipeline import export_model

    grown = export_model(tiny_checkpoint, tmp_path / "g", progress=False, dtype="fp16")
    pre = export_model(tiny_checkpoint, tmp_path / "p", progress=False, dtype="fp16", kv_cache="preallocated")
    assert grown.kv.dtype == pre.kv.dtype == "float16" and pre.kv.allocation == "preallocated"
    sources = [[10, 11, 12, 13, 2], [20, 21, 2]]
    want = [r.ids for r in sp.load(tmp_path / "g").generate(sources, max_new_tokens=8)]
    host = sp.load(tmp_path / "p")
    assert [r.ids for r in host.generate(sources, max_new_tokens=8)] == want
    device = sp.load(tmp_path / "p", options=sp.RuntimeOptions(device_loop=True))
    assert [r.ids for r in device.generate(sources, max_new_tokens=8)] == want
    assert host.new_cache(2, 9).keys[0].dtype == "float16"


def test_t5_stays_fp32(artifact_copy):
    manifest = dataclasses.replace(load_manifest(artifact_copy), family="t5")
    with pytest.raises(ExportError, match="overflow float16.*--dtype fp32"):
        fp16_artifact(artifact_copy, manifest)


def test_unknown_dtype_is_refused(tiny_checkpoint, tmp_path):
    from seqport.export.pipeline import export_model

    with pytest.raises(ExportError, match="--dtype must be fp32 or fp16"):
        export_model(tiny_checkpoint, tmp_path / "out", dtype="bf16")
