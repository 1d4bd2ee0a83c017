"""engine/causal_inputs.py: a decoder-only request's step inputs made incrementally must equal
causal_lm.step_mask's (the mask and positions derived from the prompt mask every step), for
growing and preallocated caches, left-padded rows, rows dropped and reordered mid-request."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from seqport.engine.causal_inputs import GROWING_ROOM, CausalInputs
from seqport.engine.causal_lm import left_pad, step_mask


@dataclass
class _Cache:  # the three things the step inputs read of a KVCache
    length: int
    capacity: int
    is_preallocated: bool


def _steps(preallocated: bool, new_tokens: int):
    """A left-padded batch of 3 prompts (widths 5, 2, 4), then `new_tokens` steps; rows are
    reordered (beam-like) at step 3 and row 1 is dropped at step 5."""
    _, mask = left_pad([[5, 6, 7, 8, 9], [3, 4], [1, 2, 3, 4]], pad_id=0)  # (3, 5)
    width = mask.shape[1]
    capacity = width + new_tokens
    sources = np.arange(3)
    yield mask, _Cache(0, capacity if preallocated else 0, preallocated), sources, width  # the prompt
    for step in range(new_tokens - 1):
        if step == 3:
            sources = np.array([2, 0, 0])
        if step == 5:
            sources = np.array([2, 0])
        past = width + step
        yield mask, _Cache(past, capacity if preallocated else past, preallocated), sources, 1


@pytest.mark.parametrize("preallocated", [False, True])
def test_incremental_step_inputs_equal_step_mask(preallocated):
    inputs = None
    for mask, cache, sources, new in _steps(preallocated, new_tokens=9):
        inputs = inputs or CausalInputs(mask, step_mask)
        got_mask, got_positions = inputs(sources, cache, new)
        want_mask, want_positions = step_mask(mask[sources], cache, new)
        np.testing.assert_array_equal(got_mask, want_mask, err_msg=f"mask at past {cache.length}")
        np.testing.assert_array_equal(got_positions, want_positions, err_msg=f"positions at past {cache.length}")
        assert got_mask.dtype == got_positions.dtype == np.int64 and got_mask.flags.c_contiguous


def test_a_preallocated_step_touches_only_the_new_slots():
    """After the first decode step the mask is the same buffer, one more slot marked: no
    (N, C) array is made per step."""
    mask = np.ones((1, 2048), dtype=np.int64)
    inputs = CausalInputs(mask, step_mask)
    first, _ = inputs(np.arange(1), _Cache(2048, 2048 + 128, True), 1)
    second, positions = inputs(np.arange(1), _Cache(2049, 2048 + 128, True), 1)
    assert second is first and first[0, :2050].all() and not first[0, 2050:].any()
    assert positions.tolist() == [[2049]]


def test_a_growing_mask_is_made_again_only_past_its_room():
    mask = np.ones((1, 4), dtype=np.int64)
    inputs = CausalInputs(mask, step_mask)
    views = [inputs(np.arange(1), _Cache(p, p, False), 1)[0] for p in range(4, 4 + GROWING_ROOM + 2)]
    assert [v.shape[1] for v in views] == list(range(5, 5 + GROWING_ROOM + 2))
    bases = {id(v.base) for v in views}
    assert len(bases) == 2, "one buffer for GROWING_ROOM tokens, then one more"
