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
    assert graph.input[0].type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.FLOAT)  # I/O kept
    model = sp.load(artifact_copy)  # the sha256 of the fp16 files is in the manifest
    assert len(model.generate([[10, 11, 12, 2]], max_new_tokens=4)[0].ids) <= 4


def test_t5_stays_fp32(artifact_copy):
    manifest = dataclasses.replace(load_manifest(artifact_copy), family="t5")
    with pytest.raises(ExportError, match="overflow float16.*--dtype fp32"):
        fp16_artifact(artifact_copy, manifest)


def test_unknown_dtype_is_refused(tiny_checkpoint, tmp_path):
    from seqport.export.pipeline import export_model

    with pytest.raises(ExportError, match="--dtype must be fp32 or fp16"):
        export_model(tiny_checkpoint, tmp_path / "out", dtype="bf16")
