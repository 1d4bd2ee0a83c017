"""Every documented user error: a seqport error with a message that says what to do."""

from __future__ import annotations

import json

import pytest

import seqport.engine as sp
from seqport.engine.errors import (
    ArtifactError,
    ConfigError,
    InputError,
    IntegrityError,
    ManifestError,
    ProviderError,
    RuntimeFailure,
    SeqportError,
)


def test_missing_artifact_folder(tmp_path):
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        sp.load(tmp_path / "nope")


def test_folder_without_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="is not a seqport artifact"):
        sp.load(tmp_path)


def test_missing_component_file(artifact_copy):
    (artifact_copy / "decoder.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"component file missing: .*decoder.onnx"):
        sp.load(artifact_copy)


def test_corrupt_component_fails_sha256(artifact_copy):
    path = artifact_copy / "encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match the sha256"):
        sp.load(artifact_copy)


def test_garbage_onnx_is_a_runtime_failure_not_a_raw_trace(artifact_copy):
    (artifact_copy / "encoder.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(RuntimeFailure, match="onnxruntime could not load .*encoder.onnx"):
        sp.load(artifact_copy, verify=False)


def test_unknown_format_version(artifact_copy):
    path = artifact_copy / "seqport.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="format_version 99.*Upgrade seqport"):
        sp.load(artifact_copy)


def test_manifest_that_is_not_json(artifact_copy):
    (artifact_copy / "seqport.json").write_text("{ this is not json")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        sp.load(artifact_copy)


def test_missing_tokenizer(artifact_copy):
    (artifact_copy / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer file missing"):
        sp.load(artifact_copy)


def test_unknown_provider(tiny_artifact):
    with pytest.raises(ProviderError, match=r"'warp-drive' is not available.*available: .*cpu"):
        sp.load(tiny_artifact, provider="warp-drive")


@pytest.mark.parametrize("inputs", ["", "   ", ["ok", ""]])
def test_empty_input_text(model, inputs):
    with pytest.raises(InputError, match="is empty"):
        model.generate(inputs)


def test_no_inputs(model):
    with pytest.raises(InputError, match="no inputs"):
        model.generate([])


def test_empty_token_ids(model):
    with pytest.raises(InputError, match="has no tokens"):
        model.generate([[5, 6, 2], []])


def test_token_ids_outside_vocabulary(model):
    with pytest.raises(InputError, match=r"outside the vocabulary \[0, 120\)"):
        model.generate([[5, 999, 2]])


def test_over_long_input_errors_by_default(model):
    long_ids = [[7] * 60 + [2]]
    with pytest.raises(InputError, match="more than the model's maximum of 40.*truncate=True"):
        model.generate(long_ids)


def test_over_long_input_truncated_when_asked(model):
    result = model.generate([[7] * 60 + [2]], truncate=True, max_new_tokens=3)
    explicit = model.generate([[7] * 39 + [2]], max_new_tokens=3)  # truncation keeps the EOS
    assert result[0].ids == explicit[0].ids
    assert result[0].score == pytest.approx(explicit[0].score, abs=1e-6)


def test_invalid_generation_options(model):
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer >= 1"):
        model.generate("the cat", max_new_tokens=0)
    with pytest.raises(TypeError, match="unknown generation option.*num_beamz"):
        model.generate("the cat", num_beamz=4)


def test_every_error_is_a_seqport_error_and_a_builtin():
    assert issubclass(ArtifactError, FileNotFoundError) and issubclass(ArtifactError, SeqportError)
    assert issubclass(ManifestError, ValueError) and issubclass(ProviderError, RuntimeError)
    assert issubclass(InputError, ValueError) and issubclass(IntegrityError, SeqportError)
