"""docs/own-model.md is a test: its python blocks run top to bottom as one script."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "own-model.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_doc_has_the_promised_parts():
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    code = "\n".join(blocks)
    assert len(blocks) >= 7
    needed = ("class TinySeq2SeqAdapter", "export_adapter(", "sp.load(", ".generate(", ".embed(")
    needed += ("class SSRU", "StateSpec(", "num_beams=3", "def torch_rnn_beam")
    for part in needed:
        assert part in code, f"docs/own-model.md lost {part!r}"
    assert "seqport.export.models" not in code, "the doc's model must be the user's own, not the library's"


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> dict:
    """The doc's namespace after running every block once, in a fresh folder (its artifacts)."""
    pytest.importorskip("torch")
    folder, before = tmp_path_factory.mktemp("own-model"), os.getcwd()
    namespace: dict = {"__name__": "own_model_doc", "__folder__": folder}
    os.chdir(folder)
    try:
        for index, block in enumerate(python_blocks(DOC.read_text(encoding="utf-8"))):
            exec(compile(block, f"{DOC.name}[block {index}]", "exec"), namespace)  # the doc is the test
    finally:
        os.chdir(before)
    return namespace


@pytest.mark.export
def test_doc_code_exports_validates_and_generates(doc):
    manifest = doc["manifest"]
    assert manifest.architecture == "encoder-decoder" and manifest.family == "tiny-seq2seq"
    assert set(manifest.validation.max_abs_diff) == {"encoder", "decoder"}
    assert all(diff <= 1e-4 for outputs in manifest.validation.max_abs_diff.values() for diff in outputs.values())
    assert (doc["__folder__"] / "tiny-artifact" / "seqport.json").is_file()
    assert manifest.states == {}, "a K/V adapter keeps the manifest's K/V layout"
    results = doc["results"]
    assert len(results) == 3 and all(r.ids for r in results)
    assert len({tuple(r.ids) for r in results}) > 1, "outputs should differ between inputs for the check to mean much"
    # the doc itself asserts the engine's greedy ids equal its PyTorch greedy loop; check it ran
    assert callable(doc["torch_greedy"])

    vectors = doc["vectors"]
    assert vectors.shape == (3, 24) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    encoder_manifest = doc["encoder"].manifest
    assert encoder_manifest.architecture == "encoder-only" and encoder_manifest.pooling.modes == ["mean"]


@pytest.mark.export
def test_recurrent_example_starts_from_its_declared_state(doc):
    """The adapter's first state is (B, 24), not empty: once a Gather error at the first step
    (the engine built a zero-length K/V cache); now the manifest declares it and the engine
    starts from it. The doc asserts greedy and beam ids equal its PyTorch searches."""
    from seqport.engine.manifest import StateSpec

    manifest = doc["rnn_manifest"]
    assert manifest.family == "tiny-recurrent" and manifest.format_version == 3
    assert manifest.states == {"cell": StateSpec(["batch", 24], "float32", "zeros")}
    decoder = manifest.components["decoder"]
    assert decoder.inputs["past_cell.{i}"].shape == ["batch_size", 24]
    assert decoder.outputs["present_cell.{i}"].name == "present.{i}.decoder.cell"
    assert decoder.inputs["position_ids"].shape == ["batch_size", "sequence_length"]
    assert not any(name.startswith(("past_key", "present_key")) for name in [*decoder.inputs, *decoder.outputs])
    figures = manifest.validation.max_abs_diff["decoder"]
    assert set(figures) == {"logits", "present_cell"} and max(figures.values()) <= 1e-4
    greedy, beams = doc["greedy"], doc["beams"]
    assert all(r.ids for r in greedy) and len({tuple(r.ids) for r in greedy}) > 1
    assert any(b.ids != g.ids for b, g in zip(beams, greedy)), "beam search should find another path somewhere"


@pytest.mark.export
def test_recurrent_beams_fail_when_the_state_does_not_follow_its_beam(doc, monkeypatch):
    """The beam check can fail: a cache that keeps rows in place instead of following the
    parents gives other ids than the PyTorch beam search."""
    from seqport.engine.state_cache import StateCache

    right = StateCache.take
    monkeypatch.setattr(StateCache, "take", lambda self, rows: right(self, np.arange(len(rows))))
    ids = doc["rnn_engine"].input_ids(doc["sentences"])
    wrong = doc["rnn_engine"].generate_ids(ids, doc["rnn_engine"].default_config.replace(
        max_new_tokens=8, num_beams=3, early_stopping=True))  # fmt: skip
    assert [r.ids for r in wrong] != [doc["torch_rnn_beam"](row) for row in ids]


@pytest.mark.export
def test_recurrent_beam_paths_score_as_in_pytorch(doc):
    """Every returned hypothesis: its token log-probs equal PyTorch's along the same path."""
    import torch

    adapter, engine = doc["rnn_adapter"], doc["rnn_engine"]
    bos, eos = doc["BOS"], doc["EOS"]
    results = engine.generate(doc["sentences"], max_new_tokens=8, num_beams=3, num_return_sequences=3)
    for ids, result in zip(engine.input_ids(doc["sentences"]), results):
        assert len(result.sequences) == 3
        for hypothesis in result.sequences:
            path = hypothesis.ids + ([eos] if hypothesis.finish_reason == "eos" else [])
            with torch.inference_mode():
                src = torch.tensor([ids])
                _, cross = adapter.encode(src, torch.ones_like(src))
                tokens = torch.tensor([[bos, *path[:-1]]])
                positions = torch.arange(tokens.shape[1])[None]
                hidden, _ = adapter.decode_step(tokens, torch.ones_like(src), cross, adapter.empty_past(1), positions)
                logprobs = torch.log_softmax(adapter.logits(hidden).double(), -1)[0]  # (T, V)
            expected = logprobs[torch.arange(len(path)), torch.tensor(path)].numpy()
            np.testing.assert_allclose(hypothesis.token_logprobs, expected[: len(hypothesis.token_logprobs)], atol=1e-4)


@pytest.mark.export
def test_recurrent_model_on_the_device_loop(doc):
    """RuntimeOptions(device_loop=True) on CPU: the same greedy and beam ids as the host loop."""
    import seqport.engine as sp
    from seqport.engine.runtime import RuntimeOptions

    engine = sp.load(doc["__folder__"] / "tiny-recurrent", options=RuntimeOptions(device_loop=True))
    assert engine.placement is not doc["rnn_engine"].placement
    sentences = doc["sentences"]
    assert [r.ids for r in engine.generate(sentences, max_new_tokens=8)] == [r.ids for r in doc["greedy"]]
    beams = engine.generate(sentences, max_new_tokens=8, num_beams=3, early_stopping=True)
    assert [r.ids for r in beams] == [r.ids for r in doc["beams"]]


@pytest.mark.export
def test_recurrent_scoring_feeds_positions(doc):
    """score() (one teacher-forced call from the initial state) agrees with generation's log-probs."""
    engine, greedy = doc["rnn_engine"], doc["greedy"]
    scores = engine.score(doc["sentences"], [r.ids for r in greedy])
    for score, result in zip(scores, greedy):
        np.testing.assert_allclose(score.token_logprobs, result.token_logprobs, atol=1e-4)


def _wrong_rule_adapter(doc, states=None, initial=None, present=None):
    """The doc's RecurrentAdapter with another declared rule, initial state or step result."""
    base = doc["RecurrentAdapter"]

    class Wrong(base):
        def spec(self):
            spec = base.spec(self)
            return doc["ModelSpec"](**{**spec.__dict__, "states": states or spec.states})

        def empty_past(self, batch):
            return initial(batch) if initial else base.empty_past(self, batch)

        def decode_step(self, input_ids, encoder_attention_mask, cross, past, position_ids):
            hidden, layers = base.decode_step(self, input_ids, encoder_attention_mask, cross, past, position_ids)
            return hidden, [tuple(map(present, layer)) for layer in layers] if present else layers

    return Wrong(doc["rnn_model"])


@pytest.mark.export
@pytest.mark.parametrize(
    "rule, match",
    [
        (["batch", "steps", 24], r"state 'cell' of layer 0, from empty_past\(2\): shape \(2, 24\), but its rule "
         r"\['batch', 'steps', 24\] gives \(2, 0, 24\)"),
        (["batch", 23], r"state 'cell' of layer 0, from empty_past\(2\): shape \(2, 24\).*gives \(2, 23\)"),
    ],
)  # fmt: skip
def test_a_wrong_shape_rule_fails_export(doc, tmp_path, rule, match):
    from seqport.engine.errors import ExportError
    from seqport.engine.manifest import StateSpec

    adapter = _wrong_rule_adapter(doc, states={"cell": StateSpec(rule)})
    with pytest.raises(ExportError, match=match):
        doc["export_adapter"](adapter, doc["__folder__"] / "tokenizer.json", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.export
def test_a_step_whose_state_leaves_its_rule_fails_export(doc, tmp_path):
    """empty_past follows the rule, but the step returns (B, 1, 24): named with the step."""
    from seqport.engine.errors import ExportError

    adapter = _wrong_rule_adapter(doc, present=lambda c: c[:, None, :])
    match = r"state 'cell' of layer 0, after a first step of 4 tokens: shape \(2, 1, 24\)"
    with pytest.raises(ExportError, match=match):
        doc["export_adapter"](adapter, doc["__folder__"] / "tokenizer.json", tmp_path / "out", progress=False)


@pytest.mark.export
def test_an_initial_state_that_is_not_zeros_fails_export(doc, tmp_path):
    import torch

    from seqport.engine.errors import ExportError

    adapter = _wrong_rule_adapter(doc, initial=lambda batch: [(torch.ones(batch, 24),) for _ in range(2)])
    with pytest.raises(ExportError, match=r"empty_past\(2\) is not all zeros, but the engine starts every request"):
        doc["export_adapter"](adapter, doc["__folder__"] / "tokenizer.json", tmp_path / "out", progress=False)


@pytest.mark.export
def test_kv_adapter_with_explicit_positions(doc, tmp_path):
    """A K/V adapter whose decode_step takes position_ids: the engine feeds past length +
    arange(T) and generates exactly what the same model generates computing them itself."""
    import seqport.engine as sp

    base = doc["TinySeq2SeqAdapter"]

    class Positioned(base):
        def decode_step(self, input_ids, encoder_attention_mask, cross, past, position_ids):
            m, (p, t) = self.model, (past[0][0].shape[2], input_ids.shape[1])
            future = doc["torch"].arange(p + t)[None, :] > (doc["torch"].arange(t) + p)[:, None]  # (T, P+T)
            causal = future.float() * doc["torch"].finfo(doc["torch"].float32).min
            x, present = m.embed(input_ids) + m.pos(position_ids), []
            for layer, layer_past, layer_cross in zip(m.decoder, past, cross):
                x, kv = layer(x, causal, layer_past, layer_cross, m.padding_bias(encoder_attention_mask))
                present.append(kv)
            return m.norm(x), present

    tokenizer = doc["__folder__"] / "tokenizer.json"
    manifest = doc["export_adapter"](Positioned(doc["model"]), tokenizer, tmp_path / "a", progress=False)
    decoder = manifest.components["decoder"]
    assert decoder.inputs["position_ids"].shape == ["batch_size", "sequence_length"] and manifest.states == {}
    assert decoder.inputs["past_key.{i}"].name == "past_key_values.{i}.decoder.key"
    engine, sentences = sp.load(tmp_path / "a"), doc["sentences"]
    assert [r.ids for r in engine.generate(sentences, max_new_tokens=8)] == [r.ids for r in doc["results"]]
    beams = dict(max_new_tokens=8, num_beams=3)
    expected = [r.ids for r in doc["engine"].generate(sentences, **beams)]
    assert [r.ids for r in engine.generate(sentences, **beams)] == expected
