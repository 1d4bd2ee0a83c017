"""The decoder-only greedy fast lane (issue #16): the greedy head on decoder-only exports, read
with min_new_tokens too, and engine/causal_lane.py over preallocated buffers.

One tiny seeded Llama (GQA, fused attention, preallocated KV buffers, the default of a fused
decoder-only export) on a left-padded batch of 3. The head and the lane, each on and off, must
give the general path's ids exactly and its log-probabilities within float32 rounding, equal
transformers' greedy generate token for token, and honour min_new_tokens on the step whose
argmax is a forbidden EOS.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fast_paths import count_full_logits_and_forced_steps, generate_sequences  # noqa: E402
from test_fused_attention import ROWS, _checkpoint  # noqa: E402
from test_hf_causal import MAX_NEW, PROMPTS, _hf_generate  # noqa: E402

from seqport.engine.causal_lane import CausalLane  # noqa: E402
from seqport.engine.kv_cache import KVCache  # noqa: E402
from seqport.engine.search import TokenSearch  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(transformers model, engine model) of one tiny Llama exported fused and preallocated."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("causal-lane")
    checkpoint = _checkpoint("llama", root / "checkpoint", ROWS["llama"])
    export_model(checkpoint, root / "artifact", progress=False, attention="fused")
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return hf, sp.load(root / "artifact")


def _counting(monkeypatch, name: str) -> list[int]:
    """Count the calls of TokenSearch.`name` (still running it)."""
    calls, original = [], getattr(TokenSearch, name)

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(TokenSearch, name, counted)
    return calls


def test_decoder_only_export_has_the_head_and_the_lane_applies(llama):
    _, model = llama
    outputs = model.manifest.components["decoder"].outputs
    assert outputs["greedy_ids"].dtype == "int64" and outputs["greedy_logprobs"].dtype == "float32"
    assert model.manifest.kv.allocation == "preallocated" and model.manifest.attention == "fused"
    cache = model.new_cache(3, 20)
    assert isinstance(model._lane(cache, True), CausalLane)
    assert model._lane(KVCache.empty(3, 2, 2, 8), True) is None  # a growing cache: the general step
    eos = tuple(model.manifest.special_ids.eos)
    assert model._graph_greedy(model.default_config.replace(min_new_tokens=5), eos)
    assert not model._graph_greedy(model.default_config.replace(repetition_penalty=1.2), eos)


def test_head_and_lane_equal_the_general_path_and_transformers(llama, monkeypatch):
    """min_new_tokens = max_new_tokens as the benchmark asks: every mode gives transformers' ids."""
    hf, model = llama
    batch = model.input_ids(PROMPTS)
    config = model.default_config.replace(max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW)
    general = generate_sequences(model, batch, config, head=False, lane=False, monkeypatch=monkeypatch)
    hf_tokens, _ = _hf_generate(hf, batch, model.manifest.special_ids.pad)
    assert [s.ids for s in general] == hf_tokens.tolist()
    assert len({tuple(s.ids) for s in general}) > 1, "rows should differ for the test to mean much"
    steps = _counting(monkeypatch, "_greedy")  # the full-logits argmax
    for head, lane in ((True, False), (False, True), (True, True)):
        steps.clear()
        fast = generate_sequences(model, batch, config, head=head, lane=lane, monkeypatch=monkeypatch)
        assert [s.ids for s in fast] == [s.ids for s in general], (head, lane)
        for ours, theirs in zip(fast, general):
            np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=2e-5, rtol=0)
        assert (len(steps) == 0) == head, f"head={head}: {len(steps)} full-logits steps"


def test_min_new_tokens_takes_the_logits_on_a_forbidden_eos_step(llama, monkeypatch):
    """An EOS id the model does pick at some step: before min_new_tokens that step takes the best
    other id of the logits the lane passes beside the head's choice (no processor pass), and the
    ids stay the general path's; after it, the row ends there as it does on the general path."""
    _, model = llama
    batch = model.input_ids(PROMPTS)
    plain = model.default_config.replace(max_new_tokens=MAX_NEW, min_new_tokens=0)
    free = generate_sequences(model, batch, plain, head=False, lane=False, monkeypatch=monkeypatch)
    eos = free[0].ids[4]  # row 0's 5th token, now an EOS id
    for minimum in (MAX_NEW, 2):
        config = plain.replace(eos_token_ids=(eos,), min_new_tokens=minimum)
        general = generate_sequences(model, batch, config, head=False, lane=False, monkeypatch=monkeypatch)
        full, forced = count_full_logits_and_forced_steps(monkeypatch)
        fast = generate_sequences(model, batch, config, head=True, lane=True, monkeypatch=monkeypatch)
        monkeypatch.undo()
        assert [(s.ids, s.finish_reason) for s in fast] == [(s.ids, s.finish_reason) for s in general]
        for ours, theirs in zip(fast, general):
            np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=2e-5, rtol=0)
        if minimum == MAX_NEW:
            assert 1 <= len(forced) < MAX_NEW, f"{len(forced)} steps chose the forbidden EOS: some, not all"
            assert full == [], "a forbidden EOS takes the best other id of its row, not the processor path"
        else:
            assert general[0].finish_reason == "eos" and len(general[0].ids) <= 4


def test_lane_steps_with_sampling_and_beams_equal_the_general_path(llama, monkeypatch):
    """The lane also serves full-logits searches (its logits buffer): same results with and without."""
    _, model = llama
    batch = model.input_ids(PROMPTS)
    for options in ({"do_sample": True, "seed": 3, "top_k": 0}, {"num_beams": 2}, {"repetition_penalty": 1.3}):
        config = model.default_config.replace(max_new_tokens=MAX_NEW, **options)
        general = generate_sequences(model, batch, config, head=False, lane=False, monkeypatch=monkeypatch)
        laned = generate_sequences(model, batch, config, head=True, lane=True, monkeypatch=monkeypatch)
        assert [s.ids for s in laned] == [s.ids for s in general], options


def test_a_step_writes_in_place_and_reads_only_the_filled_slots(llama):
    """Long context (issue #16): the fused node takes each preallocated buffer as both its past
    and its present, so onnxruntime's GroupQueryAttention neither zero-fills the present nor
    copies the past into it (what it does when the two are different arrays: O(C) per layer and
    step), and it attends over the filled slots only (seqlens_k and total_sequence_length are
    the filled length, not the capacity). NaN in every buffer's unwritten slots must come out of
    the prefill and a decode step untouched, and the logits must equal a run without NaN."""
    from seqport.engine.causal_lm import step_mask

    _, model = llama
    prompt, capacity = np.array([[3, 17, 8, 29, 5]], dtype=np.int64), 12

    def run(poison: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        cache, logits = model.new_cache(1, capacity), []
        for ids in (prompt, np.array([[11]], dtype=np.int64)):
            mask, position_ids = step_mask(np.ones_like(prompt), cache, ids.shape[1])
            end = cache.length + ids.shape[1]  # the slots this call fills end here
            for buffer in cache.keys + cache.values if poison else []:
                buffer[:, :, end:] = np.nan  # (1, H_kv, C - end, D)
            values = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}
            values["logits_positions"] = np.array([ids.shape[1] - 1], dtype=np.int64)
            logits.append(model.run_decoder(values, cache)["logits"])
        assert cache.length == end and all(np.isfinite(b[:, :, :end]).all() for b in cache.keys + cache.values)
        return cache.keys + cache.values, logits

    buffers, poisoned = run(poison=True)
    assert all(np.isnan(buffer[:, :, prompt.shape[1] + 1 :]).all() for buffer in buffers)
    _, clean = run(poison=False)
    for ours, theirs in zip(poisoned, clean):
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
