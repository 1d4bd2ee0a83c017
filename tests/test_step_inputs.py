"""Lockstep position_ids / attention_mask: views of per-request buffers, no array per step (issue #16)."""

from __future__ import annotations

import numpy as np
import pytest

import seqport.engine as sp
from seqport.engine.step_inputs import LockstepInputs


def _buffer(array: np.ndarray) -> np.ndarray:
    """The array a view was made from (the array itself when it owns its data)."""
    while array.base is not None:
        array = array.base
    return array


def test_lockstep_views_hold_positions_and_ones_without_copies():
    lockstep = LockstepInputs(rows=3, capacity=7)
    mask, positions = lockstep.mask(3, 5), lockstep.positions(3, 4, 1)
    assert mask.shape == (3, 5) and mask.dtype == np.int64 and (mask == 1).all()
    assert positions.shape == (3, 1) and positions.dtype == np.int64 and positions.ravel().tolist() == [4, 4, 4]
    assert mask.flags.c_contiguous and positions.flags.c_contiguous  # fed to onnxruntime as they are
    later_mask, later_positions = lockstep.mask(2, 6), lockstep.positions(2, 5, 1)  # a row left, one step on
    assert _buffer(mask) is _buffer(later_mask) and _buffer(positions) is _buffer(later_positions)
    assert later_positions.ravel().tolist() == [5, 5] and later_mask.shape == (2, 6)
    prefill = lockstep.positions(3, 0, 4)  # several new tokens: a contiguous copy, every row 0..3
    assert prefill.flags.c_contiguous and prefill.tolist() == [[0, 1, 2, 3]] * 3


def test_next_step_pairs_match_the_views_and_survive_growth():
    lockstep = LockstepInputs(rows=2, capacity=4)
    views = lockstep.next_views  # the host lane keeps this dict: it must stay the same object
    positions, mask = lockstep.next_step(2, 3)
    assert positions.ravel().tolist() == [3, 3] and mask.shape == (2, 4) and (mask == 1).all()
    assert views[(2, 3)] == (positions, mask) and lockstep.next_step(2, 3)[0] is positions  # made once
    grown_positions, grown_mask = lockstep.next_step(3, 9)  # past the planned rows and capacity
    assert lockstep.next_views is views and set(views) == {(3, 9)}  # cleared in place, refilled
    assert grown_positions.ravel().tolist() == [9, 9, 9] and grown_mask.shape == (3, 10)


def test_lockstep_buffers_grow_past_the_planned_size():
    lockstep = LockstepInputs(rows=1, capacity=2)
    assert lockstep.positions(4, 9, 1).ravel().tolist() == [9] * 4
    assert lockstep.mask(4, 10).shape == (4, 10)


@pytest.mark.export
def test_seq2seq_steps_feed_buffer_views_and_match_the_fallback(fresh_export, monkeypatch):
    """The decode loop's positions and masks equal what run_decoder's fallback makes, share one
    buffer across steps, and give the same generations."""
    pytest.importorskip("torch")
    model = sp.load(fresh_export[1])
    assert model.row_positions, "the fresh export's decoder takes position_ids and attention_mask"
    seen: list[dict[str, np.ndarray]] = []
    decoder = model.runtimes["decoder"]

    class Spy:
        input_names, output_names = decoder.input_names, decoder.output_names

        def run(self, feeds, into=None):
            seen.append(dict(feeds))
            return decoder.run(feeds, into=into) if into else decoder.run(feeds)

    batch, config = [[5, 6, 7, 2], [9, 8, 2]], sp.GenerationConfig(max_new_tokens=6, min_new_tokens=6)
    model.runtimes = {**model.runtimes, "decoder": Spy()}
    ours = model.generate_ids(batch, config)
    names = {logical: spec.name for logical, spec in model.signatures["decoder"].inputs.items()}
    for past, feeds in enumerate(seen):
        mask, positions = feeds[names["attention_mask"]], feeds[names["position_ids"]]
        assert mask.shape == (2, past + 1) and (mask == 1).all()
        assert positions.tolist() == [[past], [past]]
    later = seen[2:]  # from the second decode step on, views of the step's buffers
    for name in (names["attention_mask"], names["position_ids"]):
        assert all(_buffer(feeds[name]) is _buffer(later[0][name]) for feeds in later), name
    prepare = type(model)._prepare

    def feeding_neither(self, batch, config):  # the step feeds neither: run_decoder's fallback makes them
        first, step = prepare(self, batch, config)
        step.takes_positions = step.takes_mask = False
        return first, step

    monkeypatch.setattr(type(model), "_prepare", feeding_neither)
    fallback = model.generate_ids(batch, config)
    assert [r.ids for r in ours] == [r.ids for r in fallback]
    for a, b in zip(ours, fallback):
        np.testing.assert_allclose(a.sequences[0].token_logprobs, b.sequences[0].token_logprobs, rtol=1e-6)
