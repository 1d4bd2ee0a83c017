"""The decoder's greedy head and the host lane (issue #16: engine overhead on small models).

An encoder-decoder export gives its decoder greedy_ids / greedy_logprobs outputs
(export/greedy_head.py); plain greedy search on the host reads them instead of the (N, V)
logits, and after one checked step a request's rows run through engine/host_lane.py. Both must
give the ids of the general path exactly and its log-probabilities within float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fast_paths import count_full_logits_and_forced_steps, generate_sequences

from seqport.engine.config import GenerationConfig
from seqport.engine.device_array import Chosen
from seqport.engine.errors import RuntimeFailure, SeqportError
from seqport.engine.host_lane import HostLane
from seqport.engine.search import TokenSearch, greedy_chooser

pytestmark = pytest.mark.export
SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]  # batch 3, odd lengths


@pytest.fixture(scope="module")
def head_model(fresh_export):
    import seqport.engine as sp

    return sp.load(fresh_export[1])


def test_the_export_adds_the_head_and_plain_greedy_reads_only_it(head_model, monkeypatch):
    outputs = head_model.manifest.components["decoder"].outputs
    assert outputs["greedy_ids"].dtype == "int64" and outputs["greedy_logprobs"].dtype == "float32"
    config = GenerationConfig(max_new_tokens=12, eos_token_ids=(head_model.manifest.vocab_size - 1,))
    general = generate_sequences(head_model, SOURCES, config, head=False, lane=False, monkeypatch=monkeypatch)

    def no_logits(*args, **kwargs):
        raise AssertionError("plain greedy with the head must not take the argmax of full logits")

    monkeypatch.setattr(TokenSearch, "_greedy", no_logits)
    for lane in (False, True):
        fast = generate_sequences(head_model, SOURCES, config, head=True, lane=lane, monkeypatch=monkeypatch)
        assert [s.ids for s in fast] == [s.ids for s in general]
        assert len({tuple(s.ids) for s in fast}) > 1, "rows should differ for the test to mean much"
        for ours, theirs in zip(fast, general):
            np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=2e-5, rtol=0)


def test_min_new_tokens_reads_the_head_and_the_logits_only_when_eos_is_forbidden(head_model, monkeypatch):
    """An encoder-decoder with the head keeps its choice under min_new_tokens (the lane too); on
    the step whose argmax is the forbidden EOS the search takes the best other id of the logits
    passed beside it (no processor pass over (N, V)): the ids equal the general path's, the
    log-probabilities match after renormalisation."""
    free = GenerationConfig(max_new_tokens=15, eos_token_ids=(head_model.manifest.vocab_size - 1,))
    stop = generate_sequences(head_model, SOURCES, free, head=True, lane=False, monkeypatch=monkeypatch)[0].ids[2]
    config = GenerationConfig(max_new_tokens=15, min_new_tokens=12, eos_token_ids=(stop,))
    general = generate_sequences(head_model, SOURCES, config, head=False, lane=False, monkeypatch=monkeypatch)
    assert all(stop not in s.ids[:12] for s in general)
    full, forced = count_full_logits_and_forced_steps(monkeypatch)
    for lane in (False, True):
        full.clear(), forced.clear()
        fast = generate_sequences(head_model, SOURCES, config, head=True, lane=lane, monkeypatch=monkeypatch)
        assert [s.ids for s in fast] == [s.ids for s in general]
        assert 1 <= len(forced) < 12, "the head chose the forbidden EOS on some steps, not on all"
        assert full == [], "a forbidden EOS takes the best other id of its row, not the processor path"
        for ours, theirs in zip(fast, general):
            np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=2e-5, rtol=0)


def test_the_lane_equals_the_general_step_with_rows_leaving(head_model, monkeypatch):
    """A stop id that some rows make and others do not ends rows at different steps (the lane
    hands over to the general step, then takes the rows left); a processor makes the search read
    full logits through the lane."""
    free = GenerationConfig(max_new_tokens=15, eos_token_ids=(head_model.manifest.vocab_size - 1,))
    sequences = generate_sequences(head_model, SOURCES, free, head=True, lane=False, monkeypatch=monkeypatch)
    made = [s.ids for s in sequences]
    rows = [set(ids) for ids in made]
    first = {t: min(ids.index(t) for ids in made if t in ids) for t in set.union(*rows) - set.intersection(*rows)}
    # made by some rows, not all, first at a step that leaves the lane steps before and after
    stop = max((step, -t) for t, step in first.items() if step <= 10)[1] * -1
    calls, real_step = [], HostLane.step

    def counted(lane, tokens, cache):
        calls.append(len(tokens))  # rows in this lane step
        return real_step(lane, tokens, cache)

    monkeypatch.setattr(HostLane, "step", counted)
    for extra in ({}, {"repetition_penalty": 1.3}):
        config = GenerationConfig(max_new_tokens=15, eos_token_ids=(stop,), **extra)
        general = generate_sequences(head_model, SOURCES, config, head=True, lane=False, monkeypatch=monkeypatch)
        laned = generate_sequences(head_model, SOURCES, config, head=True, lane=True, monkeypatch=monkeypatch)
        assert [(s.ids, s.token_logprobs, s.finish_reason) for s in laned] == [
            (s.ids, s.token_logprobs, s.finish_reason) for s in general
        ]
        if not extra:
            assert {s.finish_reason for s in general} == {"eos", "length"}, "some rows should end early"
            assert len(set(calls)) > 1, f"the lane should run before and after rows leave, ran with {set(calls)} rows"


def test_the_head_serves_plain_greedy_on_the_host_only(head_model, fresh_export):
    import seqport.engine as sp

    eos = tuple(head_model.manifest.special_ids.eos)
    assert head_model._graph_greedy(GenerationConfig(), eos)
    for other in ({"do_sample": True, "top_k": 5}, {"num_beams": 2}, {"repetition_penalty": 1.2}):
        assert not head_model._graph_greedy(GenerationConfig(**other), eos), other
    device = sp.load(fresh_export[1], options=sp.RuntimeOptions(device_loop=True))
    assert not device._graph_greedy(GenerationConfig(), eos)  # the device loop selects with its own graph


def test_the_torch_backend_computes_the_head_too(head_model, fresh_export, monkeypatch):
    pytest.importorskip("torch")
    import seqport.engine as sp

    reference = sp.load(fresh_export[1], options=sp.RuntimeOptions(backend="torch"))
    assert "greedy_ids" in reference.runtimes["decoder"].output_names
    config = GenerationConfig(max_new_tokens=10)
    ours = generate_sequences(head_model, SOURCES, config, head=True, lane=True, monkeypatch=monkeypatch)
    theirs = generate_sequences(reference, SOURCES, config, head=True, lane=True, monkeypatch=monkeypatch)
    assert [s.ids for s in ours] == [s.ids for s in theirs]


def test_a_non_finite_head_logprob_fails_naming_the_row():
    search = TokenSearch(np.ones((2, 1), dtype=np.int64), [2], 5, [], greedy_chooser)
    chosen = Chosen(np.array([4, 5], dtype=np.int64), np.array([-0.5, np.nan], dtype=np.float32))
    with pytest.raises(RuntimeFailure, match=r"not finite at decoding step 1, row 1 \(input 1\)"):
        search.update(chosen)


def test_head_ids_in_onnxruntime_int64_spelling_are_not_copied():
    search = TokenSearch(np.ones((2, 1), dtype=np.int64), [2], 5, [], greedy_chooser)
    ids = np.array([4, 5], dtype="q")  # onnxruntime's int64: equal to np.int64, not the same dtype object
    decision = search.update(Chosen(ids, np.array([-0.5, -1.0], dtype=np.float32)))
    assert decision.same_rows and decision.tokens is ids and decision.rows.tolist() == [0, 1]
    finished = search.update(Chosen(np.array([2, 7], dtype=np.int32), np.zeros(2, dtype=np.float32)))
    assert finished.tokens.dtype == np.int64 and finished.tokens.tolist() == [7] and finished.rows.tolist() == [1]


def _identity_logits(vocab: int):
    """A toy graph whose output `logits` (B, L, vocab) is its input `x`: a head reads it."""
    from onnx import TensorProto, helper

    shape = ["B", "L", vocab]
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)],
    )


def test_the_head_check_catches_a_head_that_picks_other_ids(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    from seqport.engine.errors import ExportError
    from seqport.export.greedy_head import append_head, check_greedy_head

    graph = _identity_logits(50)
    append_head(graph, "logits", "float32")
    path = tmp_path / "toy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    check_greedy_head(path, "logits", 50)  # the head as added agrees with numpy
    topk = next(node for node in graph.node if node.op_type == "TopK")
    topk.attribute.append(helper.make_attribute("largest", 0))  # the smallest logit: a wrong head
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(ExportError, match="greedy head added to toy.onnx disagrees with numpy"):
        check_greedy_head(path, "logits", 50)


def test_the_head_chooses_as_numpy_argmax_on_ties_and_nan():
    """TopK(k=1) (not onnxruntime's ArgMax, a scalar loop): the first id on ties, and the NaN of
    a row that holds one (as numpy's argmax and the host path; ArgMax would skip it)."""
    pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import helper

    from seqport.export.greedy_head import GREEDY_IDS, GREEDY_LOGPROBS, append_head

    graph = _identity_logits(9)
    append_head(graph, "logits", "float32")
    assert [n.op_type for n in graph.node].count("TopK") == 1 and "ArgMax" not in [n.op_type for n in graph.node]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.random.default_rng(3).integers(-2, 3, size=(5, 2, 9)).astype(np.float32)  # many ties
    logits[3, -1, 6] = np.nan
    ids, logprobs = session.run([GREEDY_IDS, GREEDY_LOGPROBS], {"x": logits})
    assert ids.tolist() == logits[:, -1, :].argmax(axis=-1).tolist()
    assert ids[3] == 6 and np.isnan(logprobs[3]) and np.isfinite(np.delete(logprobs, 3)).all()


def test_the_blocked_head_chooses_as_numpy_argmax_and_keeps_a_nan_rows_logprob_nan(tmp_path):
    """A vocabulary of whole blocks (3 x BLOCK here, SmolLM2's 384 x 128) takes the two-stage
    argmax: the first id on ties inside a block and across blocks, maxima on block edges, -inf;
    a row holding a NaN may get another id, but its log-probability stays NaN (the engine refuses it)."""
    pytest.importorskip("onnx")
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from seqport.export.greedy_head import BLOCK, GREEDY_IDS, GREEDY_LOGPROBS, append_head, check_greedy_head

    vocab = 3 * BLOCK
    graph = _identity_logits(vocab)
    append_head(graph, "logits", "float32", vocab)
    ops = [n.op_type for n in graph.node]
    assert ops.count("ReduceMax") == 1 and ops.count("TopK") == 2
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.random.default_rng(4).integers(-2, 3, size=(7, 2, vocab)).astype(np.float32)  # many ties
    logits[0, -1, [BLOCK - 1, BLOCK]] = 5  # a tie across a block edge: the first block's id
    logits[1, -1, [vocab - 1]] = 5  # the last id of the last block
    logits[2, -1, [2 * BLOCK + 3, BLOCK + 7, BLOCK + 9]] = 5  # the middle block's first
    logits[3, -1, :] = -np.inf
    logits[3, -1, 200] = 0.0  # every other token forbidden
    logits[4, -1, 0] = 5  # the very first id
    ids, logprobs = session.run([GREEDY_IDS, GREEDY_LOGPROBS], {"x": logits[:6]})
    last = logits[:6, -1, :].astype(np.float64)  # (B, V)
    want_lp = -np.log(np.exp(last - last.max(axis=-1, keepdims=True)).sum(axis=-1))
    assert ids.tolist() == last.argmax(axis=-1).tolist() == [BLOCK - 1, vocab - 1, BLOCK + 7, 200, 0, ids[5]]
    np.testing.assert_allclose(logprobs, want_lp, rtol=1e-5, atol=1e-5)
    logits[6, -1, 6] = np.nan
    _, logprobs = session.run([GREEDY_IDS, GREEDY_LOGPROBS], {"x": logits})
    assert np.isnan(logprobs[6]) and np.isfinite(logprobs[:6]).all()
    onnx.save(model, tmp_path / "toy.onnx")
    check_greedy_head(tmp_path / "toy.onnx", "logits", vocab)  # the export's own check passes it


def test_without_torch_the_bundled_cache_falls_back_to_an_entry_without_the_head(fresh_export, tmp_path, monkeypatch):
    """A runtime-only install (no torch, so no export) keeps using a translator cached before the head existed."""
    import dataclasses
    import shutil

    from seqport.engine.manifest import load_manifest
    from seqport.export import bundled

    monkeypatch.setenv("SEQPORT_CACHE", str(tmp_path))
    checkpoint = bundled.bundled_checkpoint()
    digest = bundled.sha256_of(checkpoint / "model.safetensors")[:12]
    old = Path(shutil.copytree(fresh_export[1], tmp_path / f"translator-{digest}-rows"))
    manifest = load_manifest(old)
    decoder = manifest.components["decoder"]
    outputs = {k: v for k, v in decoder.outputs.items() if not k.startswith("greedy_")}  # as exported before
    components = {**manifest.components, "decoder": dataclasses.replace(decoder, outputs=outputs)}
    dataclasses.replace(manifest, components=components).save(old)
    monkeypatch.setattr(bundled, "_can_export", lambda: False)
    assert bundled.cached_artifact(checkpoint, progress=False) == (old, True)
    current = Path(shutil.copytree(fresh_export[1], tmp_path / f"translator-{digest}-rows-head"))
    assert bundled.cached_artifact(checkpoint, progress=False) == (current, True)  # the head's entry first


def _forced_search(eos: int) -> TokenSearch:
    """A greedy search of two rows whose min_new_tokens (3) forbids `eos` now."""
    from functools import partial

    from seqport.engine import processors as proc

    forbid = partial(proc.min_new_tokens, minimum=3, eos=(eos,))
    return TokenSearch(np.ones((2, 1), dtype=np.int64), [eos], 5, [forbid], greedy_chooser)


def test_a_forbidden_eos_takes_the_rows_best_other_id_with_the_renormalised_logprob():
    logits = np.log(np.array([[0.1, 0.2, 0.6, 0.1], [0.5, 0.1, 0.3, 0.1]], dtype=np.float32))  # (2, V=4)
    head = Chosen(np.array([2, 0], dtype=np.int64), np.log(np.array([0.6, 0.5], dtype=np.float32)), logits)
    decision = _forced_search(eos=2).update(head)
    assert decision.tokens.tolist() == [1, 0]  # row 0's argmax is the EOS: its best other id; row 1 keeps its own
    search = _forced_search(eos=2)
    search.update(head)
    logprobs = search._log[-1][2]
    np.testing.assert_allclose(logprobs, np.log([0.2 / 0.4, 0.5 / 0.7]), rtol=1e-6)


def test_a_row_that_only_eos_may_end_is_refused_not_given_a_token():
    logits = np.array([[-np.inf, -np.inf, 0.0, -np.inf], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    head = Chosen(np.array([2, 0], dtype=np.int64), np.array([0.0, np.log(0.25)], dtype=np.float32), logits)
    with pytest.raises(SeqportError, match="row 0|input 0"):
        _forced_search(eos=2).update(head)
