"""Declared decoder state (manifest `states`, format 3) and StateCache, without torch.

The exported recurrent model itself (greedy, beams, device loop, wrong rules at export) is
tested in tests/test_own_model_doc.py, which runs docs/own-model.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqport.engine.errors import ManifestError
from seqport.engine.manifest import Manifest, StateSpec, TensorSpec
from seqport.engine.state_cache import StateCache


def _data(tiny_artifact):
    return json.loads((tiny_artifact / "seqport.json").read_text())


def _with_cell_state(data: dict, rule: list) -> dict:
    """The tiny artifact's decoder with its self-attention K/V replaced by one state `cell`."""
    decoder = data["components"]["decoder"]
    for key in ("past_key.{i}", "past_value.{i}"):
        del decoder["inputs"][key]
    for key in ("present_key.{i}", "present_value.{i}"):
        del decoder["outputs"][key]
    dims = ["batch_size" if d == "batch" else d for d in rule]
    decoder["inputs"]["past_cell.{i}"] = {"name": "past_key_values.{i}.decoder.cell", "dtype": "float32", "shape": dims}
    decoder["outputs"]["present_cell.{i}"] = {"name": "present.{i}.decoder.cell", "dtype": "float32", "shape": dims}
    data["states"] = {"cell": {"shape": rule, "dtype": "float32", "initial": "zeros"}}
    return data


def test_states_round_trip_and_replace_the_kv_names(tiny_artifact):
    manifest = Manifest.from_dict(_with_cell_state(_data(tiny_artifact), ["batch", 24]))
    assert manifest.states == {"cell": StateSpec(["batch", 24])}
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert manifest.components["decoder"].inputs["past_cell.{i}"] == TensorSpec(
        "past_key_values.{i}.decoder.cell", "float32", ["batch_size", 24]
    )


def test_manifests_without_states_read_as_before(tiny_artifact):
    """Format 2 had no `states`: such a manifest loads with none, i.e. the K/V cache of `kv`."""
    data = _data(tiny_artifact)
    data["format_version"] = 2
    del data["states"]
    manifest = Manifest.from_dict(data)
    assert manifest.states == {} and manifest.format_version == 2


@pytest.mark.parametrize(
    "rule, match",
    [
        ([24, "batch"], r"\$\.states\.cell\.shape: \[24, 'batch'\] must start with 'batch'"),
        (["batch", "steps", "steps"], r"\$\.states\.cell\.shape: .* at most one 'steps'"),
        (["batch", "width"], r"\$\.states\.cell\.shape: .* no other names"),
        (["batch", -2], r"\$\.states\.cell\.shape: .* sizes >= 0"),
    ],
)
def test_bad_shape_rules_are_refused(tiny_artifact, rule, match):
    with pytest.raises(ManifestError, match=match):
        Manifest.from_dict(_with_cell_state(_data(tiny_artifact), rule))


def test_state_needs_its_decoder_names_and_a_known_initial_value(tiny_artifact):
    data = _with_cell_state(_data(tiny_artifact), ["batch", 24])
    del data["components"]["decoder"]["outputs"]["present_cell.{i}"]
    data["states"]["cell"]["initial"] = "ones"
    data["states"]["cell"]["dtype"] = "int64"
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    message = str(info.value)
    assert "$.components.decoder.outputs: missing 'present_cell.{i}'" in message
    assert "$.states.cell: dtype must be one of ('float32', 'float16') and initial one of ('zeros',)" in message


def test_state_rank_must_match_the_graph_tensors(tiny_artifact):
    data = _with_cell_state(_data(tiny_artifact), ["batch", 24])
    data["states"]["cell"]["shape"] = ["batch", 4, 24]
    with pytest.raises(ManifestError, match=r"past_cell\.\{i\}\.shape: \['batch_size', 24\] has not the rank of"):
        Manifest.from_dict(data)


def test_states_need_a_growing_cache(tiny_artifact):
    data = _with_cell_state(_data(tiny_artifact), ["batch", 24])
    data["kv"]["allocation"] = "preallocated"
    with pytest.raises(ManifestError, match=r"\$\.states: declared states need kv.allocation 'growing'"):
        Manifest.from_dict(data)


def test_state_cache_starts_from_the_declared_initial_state():
    states = {"cell": StateSpec(["batch", 5]), "key": StateSpec(["batch", 2, "steps", 3])}
    cache = StateCache.initial(4, states, num_layers=2)
    feeds = cache.feeds(new=1)
    assert sorted(feeds) == ["past_cell.0", "past_cell.1", "past_key.0", "past_key.1"]
    assert feeds["past_cell.1"].shape == (4, 5) and not feeds["past_cell.1"].any()
    assert feeds["past_key.0"].shape == (4, 2, 0, 3)
    assert cache.length == 0 and cache.batch == 4 and cache.outputs_into() == {}


def test_state_cache_updates_counts_and_reorders_rows():
    cache = StateCache.initial(3, {"cell": StateSpec(["batch", 2])}, num_layers=1)
    present = np.arange(6, dtype=np.float32).reshape(3, 2)  # row r holds [2r, 2r+1]
    cache.update({"present_cell.0": present, "logits": np.zeros((3, 1, 7))}, new=2)
    assert cache.length == 2
    cache.take(np.array([2, 2, 0]))  # beams: new row r continues old row rows[r]
    np.testing.assert_array_equal(cache.feeds()["past_cell.0"], [[4, 5], [4, 5], [0, 1]])
    cache.take(np.array([1]))  # rows leaving
    assert cache.batch == 1 and cache.length == 2
    cache.release()
    assert cache.feeds() == {}
