"""Weights on disk (export/weights_layout.py): external data, shared tensors stored once and
opened once, checked at load, and the same tokens as inline weights."""

from __future__ import annotations

import dataclasses
import json
import mmap
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.export
pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import seqport.engine as sp  # noqa: E402
from seqport.engine.errors import ArtifactError, IntegrityError  # noqa: E402
from seqport.engine.manifest import DTYPES, Manifest, load_manifest, sha256_of  # noqa: E402
from seqport.engine.runtime import open_runtime  # noqa: E402
from seqport.export.weights_layout import ALIGNMENT, SHARED_FILE, externalize_weights  # noqa: E402

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]
EMBEDDING = "model.embed.weight"  # tied: the encoder's and decoder's Gather, the decoder's projection


@pytest.fixture(scope="module")
def layout_export(tiny_checkpoint, tmp_path_factory):
    """The committed tiny checkpoint exported now (tests/data/tiny_artifact is its inline export)."""
    from seqport.export.pipeline import export_model

    out = tmp_path_factory.mktemp("layout") / "artifact"
    export_model(tiny_checkpoint, out, progress=False)
    return out


@pytest.fixture
def layout_copy(layout_export, tmp_path):
    return shutil.copytree(layout_export, tmp_path / "artifact")


def _generate(folder, **options):
    model = sp.load(folder, options=sp.RuntimeOptions(**options))
    return model.generate(SOURCES, max_new_tokens=8, min_new_tokens=8)


def _initializer(folder, component, name):
    graph = onnx.load(str(folder / f"{component}.onnx"), load_external_data=False).graph
    return next(t for t in graph.initializer if t.name == name)


def test_shared_tensors_are_stored_once(layout_export, tiny_artifact):
    manifest = load_manifest(layout_export)
    shared = manifest.shared_weights
    assert shared.file == SHARED_FILE and shared.sha256 == sha256_of(layout_export / SHARED_FILE)
    assert shared.tensors[EMBEDDING].components == ["decoder", "encoder"]
    for name, tensor in shared.tensors.items():
        assert tensor.offset % ALIGNMENT == 0 and tensor.dtype in DTYPES
        for component in tensor.components:
            entries = {e.key: e.value for e in _initializer(layout_export, component, name).external_data}
            assert entries["location"] == SHARED_FILE and int(entries["offset"]) == tensor.offset
    for name, component in manifest.components.items():
        assert component.data.file == f"{name}.onnx.data"
        assert component.data.sha256 == sha256_of(layout_export / component.data.file)
        assert component.sha256 == sha256_of(layout_export / component.file)
    embedding = onnx.numpy_helper.to_array(_initializer(tiny_artifact, "encoder", EMBEDDING)).tobytes()
    files = [p for p in layout_export.iterdir() if p.suffix in (".onnx", ".data")]
    assert sum(p.read_bytes().count(embedding) for p in files) == 1  # the tied embedding, once
    inline = sum(p.stat().st_size for p in tiny_artifact.glob("*.onnx"))
    assert sum(p.stat().st_size for p in files) < inline


def test_manifest_round_trips(layout_export):
    manifest = load_manifest(layout_export)
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert (layout_export / "seqport.json").read_text() == manifest.to_json()


def test_same_tokens_as_inline_weights(layout_export, tiny_artifact):
    for ours, inline in zip(_generate(layout_export), _generate(tiny_artifact)):
        assert ours.ids == inline.ids
        np.testing.assert_allclose(ours.token_logprobs, inline.token_logprobs, atol=1e-4)


def test_each_session_gets_the_one_mapped_copy(layout_export):
    model = sp.load(layout_export)
    arrays = [dict(model.runtimes[c]._initializers)[EMBEDDING][0] for c in ("encoder", "decoder")]
    assert arrays[0] is arrays[1] and not arrays[0].flags.writeable
    assert isinstance(arrays[0].base.base.obj, mmap.mmap)  # a read-only mapping of shared.data, not a copy


@pytest.mark.parametrize("verify", [True, False])
def test_shared_file_is_read_into_small_pages(layout_export, monkeypatch, verify):
    """The shared file goes through the page cache in 4 KiB pages (POSIX_FADV_RANDOM) before it
    is mapped, with or without the sha256 check: a token Gather then maps 4 KiB, not a 2 MiB
    folio (engine/artifact_files.blocks)."""
    import os

    import seqport.engine.artifact_files as files

    advised = []
    real = getattr(os, "posix_fadvise", None)
    if real is None:
        pytest.skip("this platform has no posix_fadvise")

    def spy(fd, offset, length, advice):
        advised.append((os.readlink(f"/proc/self/fd/{fd}"), advice))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(files.os, "posix_fadvise", spy)
    model = sp.load(layout_export, verify=verify)
    shared = str((layout_export / SHARED_FILE).resolve())
    assert (shared, os.POSIX_FADV_RANDOM) in advised
    assert files.sha256_of(layout_export / SHARED_FILE) == load_manifest(layout_export).shared_weights.sha256
    assert model.generate(SOURCES, max_new_tokens=4, min_new_tokens=4)[0].ids  # the mapping still serves


def test_optimized_graph_cache_keeps_external_weights(layout_export, tmp_path):
    cache = tmp_path / "cache"
    first = _generate(layout_export, optimized_model_dir=str(cache))
    model = sp.load(layout_export, options=sp.RuntimeOptions(optimized_model_dir=str(cache)))
    assert {r.loaded_from.parent for r in model.runtimes.values()} == {cache}  # both from the cache
    data = sorted(p.name for p in cache.glob("*.data"))
    assert len(data) == 2 and data[0].startswith("decoder.") and data[1].startswith("encoder.")
    second = model.generate(SOURCES, max_new_tokens=8, min_new_tokens=8)
    assert [r.ids for r in first] == [r.ids for r in second]


@pytest.mark.parametrize("name", [SHARED_FILE, "encoder.onnx.data"])
def test_verify_catches_a_corrupt_weights_file(layout_copy, name):
    path = layout_copy / name
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=rf"{name} does not match the sha256 in seqport.json"):
        sp.load(layout_copy)


@pytest.mark.parametrize(
    ("name", "used_by"), [(SHARED_FILE, r"shared by decoder, encoder"), ("decoder.onnx.data", "the weights of decoder")]
)
def test_missing_weights_file_says_to_copy_the_folder(layout_copy, name, used_by):
    (layout_copy / name).unlink()
    with pytest.raises(ArtifactError, match=rf"weights file missing: .*{name} \({used_by}\).*copy the whole artifact"):
        sp.load(layout_copy, verify=False)


def test_truncated_shared_file_is_caught_without_verify(layout_copy):
    path = layout_copy / SHARED_FILE
    path.write_bytes(path.read_bytes()[:ALIGNMENT])
    with pytest.raises(IntegrityError, match="the file is truncated"):
        sp.load(layout_copy, verify=False)


def test_layout_is_the_same_when_applied_again(layout_copy):
    manifest = load_manifest(layout_copy)
    assert externalize_weights(layout_copy, manifest) == manifest


def test_one_component_gets_external_data_only(artifact_copy):
    manifest = load_manifest(artifact_copy)
    encoder_only = dataclasses.replace(manifest, components={"encoder": manifest.components["encoder"]})
    result = externalize_weights(artifact_copy, encoder_only)
    assert result.shared_weights is None and not (artifact_copy / SHARED_FILE).exists()
    assert result.components["encoder"].data.sha256 == sha256_of(artifact_copy / "encoder.onnx.data")
    runtime = open_runtime(artifact_copy / "encoder.onnx", sp.RuntimeOptions())  # reads its .data itself
    feeds = {"input_ids": np.array([[10, 11, 12, 2]]), "attention_mask": np.ones((1, 4), dtype=np.int64)}
    assert all(out.shape[0] == 1 for out in runtime.run(feeds).values())


def test_int8_export_shares_only_identical_tensors(tiny_checkpoint, tmp_path, monkeypatch):
    from seqport.export import pipeline

    calls = []
    layout = pipeline.externalize_weights
    monkeypatch.setattr(pipeline, "externalize_weights", lambda *a: calls.append(a) or layout(*a))
    manifest = pipeline.export_model(tiny_checkpoint, tmp_path / "int8", progress=False, quantize="int8")
    assert len(calls) == 1  # once, after quantization rewrote the files
    assert manifest.quantization is not None and EMBEDDING in manifest.shared_weights.tensors
    for name, tensor in manifest.shared_weights.tensors.items():
        arrays = [onnx.load(str(tmp_path / "int8" / f"{c}.onnx")).graph.initializer for c in tensor.components]
        values = [onnx.numpy_helper.to_array(next(t for t in inits if t.name == name)) for inits in arrays]
        assert all(np.array_equal(values[0], v) for v in values[1:])
    results = sp.load(tmp_path / "int8").generate(SOURCES, max_new_tokens=5, min_new_tokens=5)
    assert [len(r.ids) for r in results] == [5, 5, 5]
