"""Artifacts other people exported: every path stays inside the artifact folder, and a tampered
seqport.json is a ManifestError listing every problem, never a traceback (issue #12).

Each test edits a copy of tests/data/tiny_artifact (3 layers, 3 heads of 8, vocab 120,
40 positions, eos 2, pad 0, bos/decoder_start 1, unk 3)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import seqport.engine as sp
from seqport.engine.errors import ArtifactError, ManifestError, RuntimeFailure
from seqport.engine.manifest import FORMAT_VERSION


def _edit(folder: Path, change) -> Path:
    path = folder / "seqport.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return folder


def _outside(tmp_path: Path, tiny_artifact: Path) -> Path:
    """A second, untouched copy beside the artifact: readable files outside its folder."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "elsewhere"))


def _set(*keys, value):
    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


# --- paths -------------------------------------------------------------------------------

PATH_KEYS = {
    "component": (("components", "encoder", "file"), "encoder.onnx", r"\$\.components\.encoder\.file"),
    "tokenizer": (("tokenizer", "file"), "tokenizer.json", r"\$\.tokenizer\.file"),
}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("key", sorted(PATH_KEYS))
@pytest.mark.parametrize("form", ["absolute", "dotdot"])
def test_paths_outside_the_folder_are_refused(artifact_copy, tiny_artifact, tmp_path, key, form, verify):
    keys, file, named = PATH_KEYS[key]
    target = _outside(tmp_path, tiny_artifact) / file  # same bytes: the sha256 check alone would pass
    value = str(target.resolve()) if form == "absolute" else f"../elsewhere/{file}"
    _edit(artifact_copy, _set(*keys, value=value))
    with pytest.raises(ArtifactError, match=named + r".*outside the artifact folder"):
        sp.load(artifact_copy, verify=verify)


@pytest.mark.parametrize("key", sorted(PATH_KEYS))
def test_symlinks_out_of_the_folder_are_refused(artifact_copy, tiny_artifact, tmp_path, key):
    _, file, named = PATH_KEYS[key]
    target = _outside(tmp_path, tiny_artifact) / file
    (artifact_copy / file).unlink()
    (artifact_copy / file).symlink_to(target)
    with pytest.raises(ArtifactError, match=named + r".*outside the artifact folder"):
        sp.load(artifact_copy)


def test_symlinks_inside_the_folder_are_fine(artifact_copy):
    (artifact_copy / "graphs").mkdir()
    (artifact_copy / "encoder.onnx").rename(artifact_copy / "graphs" / "encoder.onnx")
    (artifact_copy / "encoder.onnx").symlink_to(Path("graphs") / "encoder.onnx")
    assert len(sp.load(artifact_copy).generate(["the cat"], max_new_tokens=2)[0].ids) >= 1


def test_weights_files_outside_the_folder_are_refused(artifact_copy, tmp_path):
    """The shared file is memory-mapped and handed to onnxruntime with add_initializer, which
    skips onnxruntime's own containment check: the path must be checked before it is opened."""
    (tmp_path / "outside.data").write_bytes(b"\0" * 8192)
    tensor = {"dtype": "float32", "shape": [4], "offset": 0, "components": ["decoder"]}
    shared = {"file": "../outside.data", "sha256": "0" * 64, "tensors": {"embed": tensor}}
    _edit(artifact_copy, _set("shared_weights", value=shared))
    with pytest.raises(ArtifactError, match=r"\$\.shared_weights\.file.*outside the artifact folder"):
        sp.load(artifact_copy, verify=False)
    data = {"file": str(tmp_path / "outside.data"), "sha256": "0" * 64}
    _edit(artifact_copy, lambda d: (d.pop("shared_weights"), d["components"]["decoder"].update(data=data)))
    with pytest.raises(ArtifactError, match=r"\$\.components\.decoder\.data\.file.*outside the artifact folder"):
        sp.load(artifact_copy, verify=False)


def test_onnxruntime_still_refuses_external_data_outside_the_folder(tmp_path):
    """A graph whose own external-data location leaves the folder is refused by onnxruntime."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from seqport.engine.runtime import RuntimeOptions, open_runtime

    folder = tmp_path / "artifact"
    folder.mkdir()
    (tmp_path / "secret.data").write_bytes(np.ones(4, np.float32).tobytes())
    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.data"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(folder / "m.onnx"))
    with pytest.raises(RuntimeFailure, match="could not load"):
        open_runtime(folder / "m.onnx", RuntimeOptions())


# --- tampered manifests ------------------------------------------------------------------


def _load_error(folder: Path) -> str:
    with pytest.raises(ManifestError) as info:
        sp.load(folder)
    return str(info.value)


@pytest.mark.parametrize("provenance", ["x", [1, 2], {"exporter": 5}, None])
def test_unknown_version_with_a_malformed_provenance(artifact_copy, provenance):
    newer = FORMAT_VERSION + 1
    _edit(artifact_copy, lambda d: d.update(format_version=newer, provenance=provenance))
    assert f"format_version {newer}" in _load_error(artifact_copy)


def test_unknown_generation_key_and_bad_generation_values(artifact_copy):
    _edit(artifact_copy, _set("generation", value={"bogus": 1, "max_new_tokens": -1}))
    message = _load_error(artifact_copy)
    assert "$.generation.bogus: unknown" in message and "max_new_tokens" in message
    _edit(artifact_copy, _set("generation", value={"suppress_tokens": [5000]}))
    assert re.search(r"\$\.generation.*suppress_tokens.*5000", _load_error(artifact_copy))


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_layers", 0), ("num_layers", -2), ("num_heads", -3), ("num_kv_heads", -3), ("num_kv_heads", 0),
     ("head_dim", 0), ("num_kv_heads", 2), ("num_layers", 2**31 - 1), ("dtype", "int8"), ("layout", "BSHD")],
)  # fmt: skip
def test_kv_geometry_out_of_range(artifact_copy, key, value):
    _edit(artifact_copy, _set("kv", key, value=value))
    assert f"$.kv.{key}" in _load_error(artifact_copy)


@pytest.mark.parametrize("value", [-5, 0, 2**40])
def test_vocab_size_out_of_range(artifact_copy, value):
    _edit(artifact_copy, _set("vocab_size", value=value))
    assert "$.vocab_size" in _load_error(artifact_copy)


def test_vocab_size_smaller_than_the_tokenizer(artifact_copy):
    _edit(artifact_copy, _set("vocab_size", value=10))  # the special ids fit, the tokenizer's 120 tokens do not
    assert re.search(r"\$\.vocab_size: 10 .*tokenizer.*120", _load_error(artifact_copy))


@pytest.mark.parametrize("value", [0, -1])
def test_max_positions_out_of_range(artifact_copy, value):
    _edit(artifact_copy, _set("max_positions", value=value))
    assert "$.max_positions" in _load_error(artifact_copy)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("eos", [1_000_000_000], "$.special_ids.eos[0]"), ("pad", -7, "$.special_ids.pad"),
     ("decoder_start", 1_000_000, "$.special_ids.decoder_start"), ("bos", 120, "$.special_ids.bos"),
     ("unk", -1, "$.special_ids.unk")],
)  # fmt: skip
def test_special_ids_outside_the_vocabulary(artifact_copy, key, value, named):
    _edit(artifact_copy, _set("special_ids", key, value=value))
    message = _load_error(artifact_copy)
    assert named in message and "[0, 120)" in message


def test_renamed_logical_output_is_named(artifact_copy):
    _edit(artifact_copy, lambda d: d["components"]["decoder"]["outputs"].update(
        logitz=d["components"]["decoder"]["outputs"].pop("logits")))  # fmt: skip
    message = _load_error(artifact_copy)
    assert "$.components.decoder.outputs" in message and "'logits'" in message


def test_missing_component_is_named(artifact_copy):
    _edit(artifact_copy, lambda d: d["components"].pop("encoder"))
    assert "$.components" in _load_error(artifact_copy)


@pytest.mark.parametrize(("kind", "logical"), [("outputs", "logits"), ("inputs", "input_ids")])
def test_graph_names_the_graph_does_not_have(artifact_copy, kind, logical):
    """The manifest's graph name must be one the .onnx file really has (not an onnxruntime error later)."""
    _edit(artifact_copy, _set("components", "decoder", kind, logical, "name", value="renamed"))
    message = _load_error(artifact_copy)
    assert f"$.components.decoder.{kind}.{logical}.name" in message and "'renamed'" in message


def test_every_problem_is_listed_at_once(artifact_copy):
    def change(data):
        data["kv"]["num_kv_heads"] = -3
        data["max_positions"] = 0
        data["special_ids"]["pad"] = -7

    message = _load_error(_edit(artifact_copy, change))
    assert all(key in message for key in ("$.kv.num_kv_heads", "$.max_positions", "$.special_ids.pad"))


def test_the_tiny_artifact_passes_every_check(tiny_artifact):
    assert sp.load(tiny_artifact).manifest.vocab_size == 120


# --- seeded mutations: the loader raises ManifestError or succeeds, nothing else ----------

HOSTILE_VALUES = [None, True, -1, 0, 2**63, 1e9, -0.5, float("nan"), "", "../x", "/etc/passwd", "{i}", [], [-1],
                  ["a"], {}, {"x": 1}, [[1]]]  # fmt: skip
HOSTILE_INTS = [-7, -1, 0, 1, 2, 10, 119, 120, 10**6, 2**31]


def _leaves(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))


def _mutated(data, rng):
    data = json.loads(json.dumps(data))
    for _ in range(int(rng.integers(1, 4))):
        paths = [p for p in _leaves(data) if p]
        *parent, last = paths[int(rng.integers(len(paths)))]
        node = data
        for key in parent:
            node = node[key]
        choice = int(rng.integers(len(HOSTILE_VALUES) + 2))
        if isinstance(node[last], int) and not isinstance(node[last], bool) and rng.random() < 0.7:
            node[last] = HOSTILE_INTS[int(rng.integers(len(HOSTILE_INTS)))]  # well-typed, out of range
        elif choice == len(HOSTILE_VALUES) and isinstance(node, dict):
            node.pop(last)  # a missing key
        elif choice == len(HOSTILE_VALUES) + 1 and isinstance(node, dict):
            node[f"{last}_extra"] = 1  # an unknown key
        else:
            node[last] = json.loads(json.dumps(HOSTILE_VALUES[choice % len(HOSTILE_VALUES)]))
    return data


def test_mutated_manifests_raise_only_manifest_errors(tiny_artifact):
    """800 seeded mutations of the tiny manifest (1 to 3 leaves each set to a hostile value, an
    integer out of range, removed, or joined by an unknown key): Manifest.from_dict succeeds or
    raises ManifestError."""
    import numpy as np

    from seqport.engine.manifest import Manifest

    rng, original, refused = np.random.default_rng(12), json.loads((tiny_artifact / "seqport.json").read_text()), 0
    for _ in range(800):
        data = _mutated(original, rng)
        try:
            Manifest.from_dict(data)
        except ManifestError:
            refused += 1
    assert refused > 600  # the mutations are hostile: nearly all must be refused


def test_mutated_artifacts_load_or_raise_seqport_errors(artifact_copy, tiny_artifact):
    """200 seeded mutations through load() (sessions, tokenizer, file checks): a SeqportError or a model."""
    import numpy as np

    rng, original = np.random.default_rng(7), json.loads((tiny_artifact / "seqport.json").read_text())
    for _ in range(200):
        (artifact_copy / "seqport.json").write_text(json.dumps(_mutated(original, rng)))
        try:
            sp.load(artifact_copy, verify=False)
        except sp.SeqportError:
            pass
