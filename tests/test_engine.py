"""Engine behaviour on the committed tiny artifact (no torch needed)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from seqport.engine.manifest import load_manifest
from seqport.engine.runtime import RuntimeOptions, open_runtime
from seqport.engine.search import log_softmax_at

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]


def test_batched_equals_single_generation(model):
    batched = model.generate(SOURCES, max_new_tokens=12)
    for source, result in zip(SOURCES, batched):
        single = model.generate([source], max_new_tokens=12)[0]  # batch 1 works
        assert result.ids == single.ids
        assert result.score == pytest.approx(single.score, abs=1e-4)


def test_batch_size_splits_and_keeps_input_order(model):
    whole = model.generate(SOURCES, max_new_tokens=8)
    split = model.generate(SOURCES, max_new_tokens=8, batch_size=1)
    assert [r.ids for r in split] == [r.ids for r in whole]


def test_result_fields(model):
    result = model.generate("the cat sat on the mat", max_new_tokens=5)[0]
    assert len(result.ids) <= 5 and len(result.token_logprobs) == len(result.ids)
    assert all(lp <= 0 for lp in result.token_logprobs)
    assert result.finish_reason in ("eos", "length")
    assert isinstance(result.text, str)
    assert result.text == model.tokenizer.decode(result.ids)


def test_rows_stop_on_their_own_at_eos(model):
    """Force EOS for one row by declaring its first greedy token an end token."""
    first = model.generate(SOURCES, max_new_tokens=1)
    eos = first[1].ids[0]
    results = model.generate(SOURCES, max_new_tokens=6, eos_token_ids=[eos])
    assert results[1].finish_reason == "eos" and results[1].ids == []
    for result in (results[0], results[2]):
        assert result.finish_reason == "length" or result.ids[-1:] != [eos]


def test_max_new_tokens_capped_to_positions_warns_once_per_model(model, caplog, monkeypatch):
    """A server capping every request must not flood its log: warning once, then debug."""
    monkeypatch.setattr(model, "_length_cap_logged", False)
    caplog.set_level(logging.DEBUG, logger="seqport.engine.generating_model")
    for _ in range(2):
        result = model.generate([[5, 2]], max_new_tokens=500)[0]
        assert len(result.ids) <= load_manifest(model.folder).max_positions
    levels = [record.levelno for record in caplog.records if "capped" in record.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]


def test_one_text_encodes_as_in_a_batch(model):
    """One text takes the tokenizer's single-text path (no GIL release); ids as encode_batch's."""
    texts = ["the cat sat on the mat", "le chat", ""]
    batch = model.tokenizer.encode(texts)
    assert [model.tokenizer.encode([text])[0] for text in texts] == batch
    assert all(ids[-1] == 2 for ids in batch)  # the post-processor's EOS in both paths


def test_cache_equals_full_recompute(tiny_artifact, model):
    """20 greedy steps with the KV cache = recomputing the whole prefix each step (≤ 1e-4)."""
    steps = 20
    source = [SOURCES[0]]
    result = model.generate(source, max_new_tokens=steps, eos_token_ids=[118])[0]
    assert len(result.ids) == steps
    ids = np.array(source, dtype=np.int64)
    mask = np.ones_like(ids)
    cross = {k: v for k, v in model.encode(ids, mask).items() if k.startswith("cross_")}
    kv = model.manifest.kv
    empty = np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), np.float32)
    past = {f"past_{n}.{i}": empty for n in ("key", "value") for i in range(kv.num_layers)}
    prefix = [model.manifest.special_ids.decoder_start]
    for step in range(steps):
        tokens = np.array([prefix], dtype=np.int64)
        out = model.run_decoder(
            {
                "input_ids": tokens,
                "encoder_attention_mask": mask,
                "logits_positions": np.arange(len(prefix)),
                **cross,
                **past,
            }
        )
        logits = out["logits"][0, -1]
        assert int(logits.argmax()) == result.ids[step]
        logprob = log_softmax_at(logits[None], np.array([result.ids[step]]))[0]
        assert abs(logprob - result.token_logprobs[step]) <= 1e-4
        prefix.append(int(logits.argmax()))


def test_decoder_logits_positions_serve_scoring_and_generation(model):
    """One graph: all positions for scoring, the last only for generation — same numbers."""
    ids = np.array([SOURCES[1]], dtype=np.int64)
    mask = np.ones_like(ids)
    cross = {k: v for k, v in model.encode(ids, mask).items() if k.startswith("cross_")}
    kv = model.manifest.kv
    empty = np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), np.float32)
    past = {f"past_{n}.{i}": empty for n in ("key", "value") for i in range(kv.num_layers)}
    feeds = {"input_ids": np.array([[1, 40, 41, 42]]), "encoder_attention_mask": mask, **cross, **past}
    every = model.run_decoder({**feeds, "logits_positions": np.arange(4)})["logits"]
    last = model.run_decoder({**feeds, "logits_positions": np.array([3])})["logits"]
    assert every.shape == (1, 4, 120) and last.shape == (1, 1, 120)
    np.testing.assert_allclose(every[:, 3:], last, atol=1e-5)


def test_feed_check_runs_before_the_runtime(model):
    from seqport.engine.errors import InputError

    with pytest.raises(InputError, match="input_ids: expected dtype int64, got float32"):
        model.encode(np.zeros((1, 3), np.float32), np.ones((1, 3), np.int64))
    with pytest.raises(InputError, match=r"axis 1 \(encoder_sequence_length\) is [34] but \w+ has [34]"):
        model.encode(np.zeros((1, 3), np.int64), np.ones((1, 4), np.int64))


def test_runtime_options_threads_and_optimized_cache(tiny_artifact, tmp_path):
    options = RuntimeOptions(intra_op_threads=1, optimized_model_dir=str(tmp_path / "opt"))
    runtime = open_runtime(tiny_artifact / "encoder.onnx", options)
    assert "input_ids" in runtime.input_names
    assert any((tmp_path / "opt").iterdir())  # the optimized graph was saved for the next load


def test_sequence_is_a_deprecated_alias_of_generated_sequence():
    import seqport.engine as sp

    with pytest.warns(DeprecationWarning, match="use seqport.engine.GeneratedSequence"):
        alias = sp.Sequence
    assert alias is sp.GeneratedSequence
    with pytest.raises(AttributeError, match="no attribute 'Sequenze'"):
        sp.Sequenze  # noqa: B018
