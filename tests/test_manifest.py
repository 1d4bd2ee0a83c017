"""The manifest schema: round trip, collected problems, version checks."""

from __future__ import annotations

import json

import pytest

from seqport.engine.errors import ManifestError
from seqport.engine.manifest import FORMAT_VERSION, Manifest, load_manifest


def _data(tiny_artifact):
    return json.loads((tiny_artifact / "seqport.json").read_text())


def test_round_trip_is_canonical(tiny_artifact):
    manifest = load_manifest(tiny_artifact)
    again = Manifest.from_dict(json.loads(manifest.to_json()))
    assert again == manifest
    assert manifest.to_json() == json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"


def test_manifest_records_contract(tiny_artifact):
    m = load_manifest(tiny_artifact)
    assert m.format_version == FORMAT_VERSION and m.architecture == "encoder-decoder"
    assert set(m.components) == {"encoder", "decoder"}
    assert all(len(c.sha256) == 64 for c in m.components.values())
    decoder = m.components["decoder"]
    assert decoder.inputs["past_key.{i}"].name == "past_key_values.{i}.decoder.key"
    assert decoder.inputs["cross_key.{i}"].name == "past_key_values.{i}.encoder.key"
    assert decoder.outputs["present_value.{i}"].name == "present.{i}.decoder.value"
    assert m.kv.num_layers == 3 and m.kv.num_kv_heads == 3 and m.kv.head_dim == 8
    assert m.special_ids.eos == [2] and m.special_ids.decoder_start == 1
    assert m.provenance.opset >= 17 and m.provenance.torch
    assert m.validation.max_abs_diff["decoder"]["logits"] <= 1e-4


def test_unknown_and_missing_keys_are_all_reported(tiny_artifact):
    data = _data(tiny_artifact)
    data["kv"]["n_layer"] = 3
    del data["special_ids"]["eos"]
    data["vocab_size"] = "big"
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    message = str(info.value)
    assert "$.kv.n_layer: unknown key" in message
    assert "$.special_ids.eos: missing" in message
    assert "$.vocab_size: expected int" in message


def test_newer_format_version_asks_to_upgrade(tiny_artifact):
    data = _data(tiny_artifact)
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ManifestError, match=r"Upgrade seqport, or re-export"):
        Manifest.from_dict(data)


def test_older_format_version_asks_to_reexport(tiny_artifact):
    data = _data(tiny_artifact)
    data["format_version"] = 0
    with pytest.raises(ManifestError, match="older than this engine.*Re-export"):
        Manifest.from_dict(data)


def test_unknown_architecture_and_dtype(tiny_artifact):
    data = _data(tiny_artifact)
    data["architecture"] = "rnn"
    data["components"]["encoder"]["inputs"]["input_ids"]["dtype"] = "int7"
    with pytest.raises(ManifestError, match=r"(?s)architecture.*rnn.*dtype: 'int7'"):
        Manifest.from_dict(data)


def _with_shared_weights(data, dtype="float32", components=("decoder", "encoder")):
    tensor = {"dtype": dtype, "shape": [120, 24], "offset": 0, "components": list(components)}
    data["shared_weights"] = {"file": "shared.data", "sha256": "0" * 64, "tensors": {"model.embed.weight": tensor}}
    data["components"]["encoder"]["data"] = {"file": "encoder.onnx.data", "sha256": "0" * 64}
    return data


def test_weights_files_are_optional_and_round_trip(tiny_artifact):
    assert load_manifest(tiny_artifact).shared_weights is None  # inline weights, as before
    manifest = Manifest.from_dict(_with_shared_weights(_data(tiny_artifact)))
    assert manifest.components["encoder"].data.file == "encoder.onnx.data"
    assert manifest.shared_weights.tensors["model.embed.weight"].shape == [120, 24]
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest


def test_shared_tensor_dtype_and_components_are_checked(tiny_artifact):
    data = _with_shared_weights(_data(tiny_artifact), dtype="int7", components=("encoder", "decoder_init"))
    data["shared_weights"]["tensors"]["model.embed.weight"]["size"] = 1
    with pytest.raises(ManifestError, match=r"shared_weights.tensors.model.embed.weight.size: unknown key"):
        Manifest.from_dict(data)
    del data["shared_weights"]["tensors"]["model.embed.weight"]["size"]
    with pytest.raises(ManifestError, match=r"(?s)dtype: 'int7' is not one of.*components: .*decoder_init"):
        Manifest.from_dict(data)


def test_format_version_1_reads_as_portable_attention(tiny_artifact):
    """Version 2 only added `attention`: a version-1 manifest (no such key) still loads."""
    data = _data(tiny_artifact)
    data["format_version"] = 1
    del data["attention"]
    manifest = Manifest.from_dict(data)
    assert manifest.attention == "portable" and manifest.format_version == 1


def test_unknown_attention_lists_the_modes(tiny_artifact):
    data = _data(tiny_artifact)
    data["attention"] = "flash"
    with pytest.raises(ManifestError, match=r"\$.attention: 'flash' is not one of \('portable', 'fused'\)"):
        Manifest.from_dict(data)
