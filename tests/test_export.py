"""Export side: component parity with PyTorch, validation failures, the contract's graphs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from seqport.engine.errors import ExportError, ParityError  # noqa: E402
from seqport.engine.inputs import pad_batch  # noqa: E402

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]


def _torch_model(checkpoint):
    from seqport.export.models import Transformer

    return Transformer.load(checkpoint)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("past_len", [0, 1, 5, 7])
def test_component_parity(fresh_export, batch, past_len):
    """Encoder and decoder vs PyTorch within 1e-4, padded sources, odd sizes."""
    import seqport.engine as sp

    checkpoint, artifact = fresh_export
    torch_model, engine = _torch_model(checkpoint), sp.load(artifact)
    ids, mask = pad_batch(SOURCES[:batch], 0)
    with torch.inference_mode():
        hidden, cross = torch_model.encode(torch.tensor(ids), torch.tensor(mask))
        ours = engine.encode(ids, mask)
        np.testing.assert_allclose(ours["encoder_hidden_states"], hidden.numpy(), atol=1e-4, rtol=0)
        for i, (k, v) in enumerate(cross):
            np.testing.assert_allclose(ours[f"cross_key.{i}"], k.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(ours[f"cross_value.{i}"], v.numpy(), atol=1e-4, rtol=0)
        gen = torch.Generator().manual_seed(past_len)
        past = torch_model.empty_past(batch)
        if past_len:
            prefix = torch.randint(4, 120, (batch, past_len), generator=gen)
            _, past = torch_model.decode_step(prefix, torch.tensor(mask), cross, past)
        new = torch.randint(4, 120, (batch, 2), generator=gen)
        hidden, present = torch_model.decode_step(new, torch.tensor(mask), cross, past)
        logits = torch_model.logits(hidden).numpy()
    feeds = {"input_ids": new.numpy(), "encoder_attention_mask": mask, "logits_positions": np.arange(2)}
    feeds.update({k: v for k, v in ours.items() if k.startswith("cross_")})
    for i, (k, v) in enumerate(past):
        feeds[f"past_key.{i}"], feeds[f"past_value.{i}"] = k.numpy(), v.numpy()
    out = engine.run_decoder(feeds)
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4, rtol=0)
    for i, (k, v) in enumerate(present):
        assert out[f"present_key.{i}"].shape == (batch, 3, past_len + 2, 8)
        np.testing.assert_allclose(out[f"present_key.{i}"], k.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(out[f"present_value.{i}"], v.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", ["committed", "fresh"])
def test_engine_greedy_equals_pytorch_greedy(which, fresh_export, tiny_checkpoint, tiny_artifact):
    """Token for token on a batch of different lengths, and per-token log-probs within 1e-4."""
    import seqport.engine as sp
    from seqport.export.reference import greedy_generate

    checkpoint, artifact = fresh_export if which == "fresh" else (tiny_checkpoint, tiny_artifact)
    torch_model, engine = _torch_model(checkpoint), sp.load(artifact)
    ids, mask = pad_batch(SOURCES, 0)
    expected = greedy_generate(torch_model, torch.tensor(ids), torch.tensor(mask), 15)
    results = engine.generate(SOURCES, max_new_tokens=15)
    assert len({tuple(r) for r in expected}) > 1, "rows should differ for the test to mean much"
    for row, result in enumerate(results):
        generated = result.ids + ([2] if result.finish_reason == "eos" else [])
        assert generated == expected[row]
        with torch.inference_mode():  # teacher-forced log-probs of the same tokens
            tgt = torch.tensor([[1] + generated[:-1]])
            logits = torch_model(
                torch.tensor(ids[row : row + 1, : mask[row].sum()]),
                torch.ones(1, int(mask[row].sum()), dtype=torch.long),
                tgt,
            )
            logprobs = logits.log_softmax(-1)[0, torch.arange(len(generated)), generated]
        np.testing.assert_allclose(result.token_logprobs, logprobs[: len(result.ids)].numpy(), atol=1e-4)


def test_decoder_holds_one_copy_of_the_weights(fresh_export):
    """No transposed or duplicated initializer (the tied embedding is stored once)."""
    import onnx
    from onnx import numpy_helper

    _, artifact = fresh_export
    graph = onnx.load(str(artifact / "decoder.onnx")).graph
    digests = {}
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        if values.size < 64:
            continue
        digest = hashlib.sha256(np.sort(values, axis=None).tobytes()).hexdigest()  # catches transposes
        assert digest not in digests, f"{init.name} duplicates {digests[digest]}"
        digests[digest] = init.name
    assert not any(node.op_type == "If" for node in graph.node)


def test_validation_failure_names_component_output_and_figures(tmp_path, tiny_checkpoint, monkeypatch):
    from seqport.export import validate
    from seqport.export.pipeline import export_model

    monkeypatch.setitem(validate.TOLERANCES, "float32", 1e-12)
    monkeypatch.setitem(validate.RTOLERANCES, "float32", 0.0)
    with pytest.raises(ParityError, match=r"decoder\.logits \[batch=1 past=0.*max abs diff .* > tolerance 1e-12"):
        export_model(tiny_checkpoint, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "seqport.json").exists()


def test_cli_export_fails_with_one_line_and_nonzero_exit(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from seqport.cli.main import main
    from seqport.export import validate

    monkeypatch.setitem(validate.TOLERANCES, "float32", 1e-12)
    monkeypatch.setitem(validate.RTOLERANCES, "float32", 0.0)
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("seqport: error: exported components disagree with PyTorch")
    assert "Traceback" not in err
    assert "--tolerance" in err  # the message names the option that would accept the figures


def test_cli_export_tolerance_scales_the_gate(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """--tolerance reaches export_model: a gate 1e-12 tight fails at 1 and passes at 1e12."""
    from seqport.cli.main import main
    from seqport.engine.manifest import load_manifest
    from seqport.export import validate

    monkeypatch.setitem(validate.TOLERANCES, "float32", 1e-12)
    monkeypatch.setitem(validate.RTOLERANCES, "float32", 0.0)
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "out"), "-q", "--tolerance", "1e12"]) == 0
    assert load_manifest(tmp_path / "out").validation.scale == 1e12
    assert "tolerance (atol + rtol" in capsys.readouterr().out


def test_unsupported_model_type_lists_supported(tmp_path):
    from seqport.export.pipeline import export_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rnn-lm"}))
    with pytest.raises(
        ExportError, match="'rnn-lm' is not supported; supported model types are: .*seqport-transformer"
    ):
        export_model(tmp_path, tmp_path / "out", progress=False)


def test_cli_export_then_generate(tmp_path, tiny_checkpoint):
    """The two commands a user types, as subprocesses, in a temporary folder."""
    out = tmp_path / "artifact"
    export = subprocess.run(
        [sys.executable, "-m", "seqport.cli", "export", str(tiny_checkpoint), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr
    assert "validation against PyTorch" in export.stdout and "logits" in export.stdout
    generate = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqport.cli",
            "generate",
            str(out),
            "the cat sat on the mat",
            "--json",
            "--max-new-tokens",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert generate.returncode == 0, generate.stderr
    record = json.loads(generate.stdout.splitlines()[0])
    assert set(record) >= {"text", "ids", "score"} and 1 <= len(record["ids"]) <= 6
    ids = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqport.cli",
            "generate",
            str(out),
            "--ids",
            "20 21 2",
            "--json",
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ids.returncode == 0, ids.stderr
    assert json.loads(ids.stdout)["ids"] == [12, 34, 34, 100]


def test_preallocated_export_writes_in_place_and_matches(fresh_export, tmp_path):
    """kv_cache="preallocated" on the reference Transformer: greedy and beam ids equal the
    growing export's, and a step writes into the very numpy buffers the cache holds."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    checkpoint, grown_folder = fresh_export
    manifest = export_model(checkpoint, tmp_path / "pre", progress=False, kv_cache="preallocated")
    assert manifest.kv.allocation == "preallocated"
    assert manifest.components["decoder"].outputs["present_key.{i}"].shape[2] == "cache_length"
    grown, pre = sp.load(grown_folder), sp.load(tmp_path / "pre")
    for options in (dict(), dict(num_beams=3, num_return_sequences=2)):
        want, got = (
            m.generate_ids(SOURCES, m.default_config.replace(max_new_tokens=9, **options)) for m in (grown, pre)
        )
        assert [[s.ids for s in r.sequences] for r in got] == [[s.ids for s in r.sequences] for r in want]
    cache = pre.new_cache(2, 6)
    buffers = cache.keys + cache.values
    ids, mask = pad_batch(SOURCES[:2], 0)
    cross = {k: v for k, v in pre.encode(ids, mask).items() if k.startswith("cross_")}
    feeds = {"input_ids": np.ones((2, 2), np.int64), "encoder_attention_mask": mask, "logits_positions": np.array([1])}
    pre.run_decoder({**feeds, **cross}, cache)
    assert all(a is b for a, b in zip(cache.keys + cache.values, buffers)) and cache.length == 2
    assert np.abs(buffers[0][:, :, :2]).sum() > 0 and not buffers[0][:, :, 2:].any()


def test_preallocated_export_needs_an_adapter_that_takes_cache_position(tmp_path, tiny_checkpoint):
    from seqport.export.families import load_adapter
    from seqport.export.pipeline import export_adapter

    real = load_adapter(tiny_checkpoint)

    class OldAdapter:  # a user adapter written before preallocated caches existed
        spec, encode, logits, empty_past = real.spec, real.encode, real.logits, real.empty_past

        def decode_step(self, input_ids, encoder_attention_mask, cross, past):
            return real.decode_step(input_ids, encoder_attention_mask, cross, past)

    with pytest.raises(ExportError, match="takes no cache_position"):
        export_adapter(OldAdapter(), tiny_checkpoint / "tokenizer.json", tmp_path / "a", kv_cache="preallocated")
    assert not (tmp_path / "a" / "seqport.json").exists()
