"""Backends behind the Runtime interface: onnxruntime options, its optimized-graph cache and
IOBinding, the PyTorch eager reference backend, and `seqport info`'s runtime listing."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

import seqport.engine as sp
from seqport.engine.errors import ArtifactError, ProviderError
from seqport.engine.runtime import RuntimeOptions, open_runtime

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]
ENCODER_FEEDS = {
    "input_ids": np.array([[5, 6, 7, 2], [8, 9, 2, 0]]),
    "attention_mask": np.array([[1] * 4, [1, 1, 1, 0]]),
}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_second_load_reads_the_saved_optimized_graph(tiny_artifact, tmp_path, caplog):
    from onnxruntime import GraphOptimizationLevel

    options = RuntimeOptions(intra_op_threads=1, optimized_model_dir=str(tmp_path / "cache"))
    path = tiny_artifact / "encoder.onnx"
    first = open_runtime(path, options)
    assert first.loaded_from == path
    (saved,) = (tmp_path / "cache").glob("*.onnx")
    assert saved.name.startswith("encoder.")
    assert saved.with_name(saved.name.replace(".onnx", ".data")).is_file()  # weights beside it, memory-mapped
    second = open_runtime(path, options)
    assert second.loaded_from == saved
    level = second._session.get_session_options().graph_optimization_level
    assert level == GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized: not optimized twice
    assert _same(first.run(ENCODER_FEEDS), second.run(ENCODER_FEEDS))
    other_level = open_runtime(
        path, RuntimeOptions(graph_optimization="basic", optimized_model_dir=options.optimized_model_dir)
    )
    assert other_level.loaded_from == path  # the key covers the optimization level
    saved.write_bytes(b"not a model")
    with caplog.at_level("WARNING"):
        recovered = open_runtime(path, options)
    assert recovered.loaded_from == path and "unreadable optimized-graph cache" in caplog.text
    assert _same(first.run(ENCODER_FEEDS), recovered.run(ENCODER_FEEDS))


def test_io_binding_gives_identical_outputs(tiny_artifact):
    plain = sp.load(tiny_artifact)
    bound = sp.load(tiny_artifact, options=RuntimeOptions(io_binding=True))
    assert _same(
        plain.encode(ENCODER_FEEDS["input_ids"], ENCODER_FEEDS["attention_mask"]),
        bound.encode(ENCODER_FEEDS["input_ids"], ENCODER_FEEDS["attention_mask"]),
    )
    for a, b in zip(plain.generate(SOURCES, max_new_tokens=9), bound.generate(SOURCES, max_new_tokens=9)):
        assert a.ids == b.ids and a.token_logprobs == b.token_logprobs


def test_session_options_reach_onnxruntime(tiny_artifact):
    options = RuntimeOptions(intra_op_threads=1, inter_op_threads=1, graph_optimization="basic", enable_mem_arena=False)
    session = open_runtime(tiny_artifact / "decoder.onnx", options)._session
    so = session.get_session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads, so.enable_cpu_mem_arena) == (1, 1, False)
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime's default (spinning)
        so.get_session_config_entry("session.intra_op.allow_spinning")


def test_component_threads_override_the_intra_op_threads_of_their_component(tiny_artifact):
    options = RuntimeOptions(intra_op_threads=1, component_threads={"encoder": 2})
    assert options.for_component("decoder") is options and options.for_component("encoder").intra_op_threads == 2
    model = sp.load(tiny_artifact, options=options)
    threads = {name: rt._session.get_session_options().intra_op_num_threads for name, rt in model.runtimes.items()}
    assert threads.pop("encoder") == 2 and threads and set(threads.values()) == {1}
    for bad in (-1, 1.5):
        with pytest.raises(ProviderError, match="thread counts must be integers >= 0"):
            RuntimeOptions(component_threads={"encoder": bad})


def test_spinning_can_be_turned_off(tiny_artifact):
    session = open_runtime(tiny_artifact / "decoder.onnx", RuntimeOptions(allow_spinning=False))._session
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_unavailable_provider_lists_the_available_ones(tiny_artifact):
    with pytest.raises(ProviderError, match=r"'tensorrt' is not available .*available: .*cpu.*seqport\[gpu\]"):
        sp.load(tiny_artifact, provider="tensorrt")
    with pytest.raises(
        ProviderError, match="unknown runtime backend 'tvm'; supported backends are: onnxruntime, torch"
    ):
        RuntimeOptions(backend="tvm")


def test_info_lists_runtimes_and_providers(capsys):
    from onnxruntime import __version__

    from seqport.cli.main import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    providers = re.search(rf"onnxruntime {re.escape(__version__)}: providers (.*)", out)
    assert providers and "cpu" in providers.group(1).split(", ")
    assert re.search(r"torch .*(devices cpu|not installed)", out)
    from seqport.engine.huge_pages import unavailable

    expected = "yes" if unavailable() is None else f"no: {unavailable()}"
    assert f"weights on huge pages after load: {expected}" in out


# --- PyTorch eager reference backend -------------------------------------------------------


def test_backends_are_found_by_entry_point():
    """The engine names no backend but its default: the torch reference comes from pyproject's
    `seqport.runtimes` entry points and lives on the export side."""
    from importlib.metadata import entry_points

    from seqport.engine.runtime import BACKENDS, ENTRY_POINT_GROUP

    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert declared == {"onnxruntime": "seqport.runtimes.onnxruntime", "torch": "seqport.export.torch_runtime"}
    assert dict(BACKENDS) == declared and list(BACKENDS)[0] == "onnxruntime"


def test_torch_missing_is_a_provider_error(tiny_artifact, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "seqport.export.torch_runtime", raising=False)
    with pytest.raises(ProviderError, match=r"the torch backend is not installed .*pip install 'seqport\[export\]'"):
        open_runtime(tiny_artifact / "decoder.onnx", RuntimeOptions(backend="torch"))


@pytest.mark.export
def test_torch_and_onnxruntime_backends_agree(tiny_artifact, tmp_path, monkeypatch):
    """Same engine loop on both backends: identical greedy tokens, logits within 1e-4."""
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # provenance.source is relative: found from the artifact's parents
    ort_model = sp.load(tiny_artifact)
    torch_model = sp.load(tiny_artifact, options=RuntimeOptions(backend="torch", intra_op_threads=1))
    assert type(torch_model.runtimes["decoder"]).__name__ == "TorchSession"
    assert set(torch_model.runtimes["decoder"].output_names) == set(ort_model.runtimes["decoder"].output_names)
    expected, got = ort_model.generate(SOURCES, max_new_tokens=12), torch_model.generate(SOURCES, max_new_tokens=12)
    assert len({tuple(r.ids) for r in expected}) > 1
    for a, b in zip(expected, got):
        assert a.ids == b.ids
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)
    ids, mask = ENCODER_FEEDS["input_ids"], ENCODER_FEEDS["attention_mask"]
    ours, theirs = ort_model.encode(ids, mask), torch_model.encode(ids, mask)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.export
def test_torch_backend_runs_decoder_step_like_onnxruntime(tiny_artifact):
    pytest.importorskip("torch")
    ort_model = sp.load(tiny_artifact)
    torch_model = sp.load(tiny_artifact, options=RuntimeOptions(backend="torch"))
    ids, mask = ENCODER_FEEDS["input_ids"], ENCODER_FEEDS["attention_mask"]
    cross = {k: v for k, v in ort_model.encode(ids, mask).items() if k.startswith("cross_")}
    past = np.random.default_rng(1).standard_normal((2, 3, 5, 8)).astype(np.float32)  # (B, H, P, D)
    feeds = {"input_ids": np.array([[7, 8], [9, 10]]), "encoder_attention_mask": mask, "logits_positions": np.arange(2)}
    feeds.update(cross)
    feeds.update({f"past_{kind}.{i}": past for i in range(3) for kind in ("key", "value")})
    ours, theirs = ort_model.run_decoder(feeds), torch_model.run_decoder(feeds)
    assert ours.keys() == theirs.keys() and theirs["present_key.0"].shape == (2, 3, 7, 8)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.export
def test_torch_backend_needs_the_source_checkpoint(artifact_copy, tiny_checkpoint):
    pytest.importorskip("torch")
    manifest = json.loads((artifact_copy / "seqport.json").read_text())
    manifest["provenance"]["source"] = "/nowhere/checkpoint"
    (artifact_copy / "seqport.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ArtifactError, match=r"'/nowhere/checkpoint' .* is not a checkpoint folder here.*torch_checkpoint"
    ):
        sp.load(artifact_copy, options=RuntimeOptions(backend="torch"))
    model = sp.load(artifact_copy, options=RuntimeOptions(backend="torch", torch_checkpoint=str(tiny_checkpoint)))
    assert len(model.generate(SOURCES[:1], max_new_tokens=3)[0].ids) >= 1


@pytest.mark.export
def test_torch_backend_rejects_onnxruntime_providers(tiny_artifact):
    pytest.importorskip("torch")
    with pytest.raises(ProviderError, match="the torch backend runs on cpu, cuda; got provider 'openvino'"):
        sp.load(tiny_artifact, provider="openvino", options=RuntimeOptions(backend="torch"))
