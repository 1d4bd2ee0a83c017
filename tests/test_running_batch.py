"""RunningBatch: rows of different past lengths merged by left padding, trimmed when they leave."""

from __future__ import annotations

import numpy as np
import pytest

from seqport.engine.kv_cache import KVCache
from seqport.engine.running_batch import RunningBatch

LAYERS, HEADS, DIM = 2, 3, 5


def _prefilled(length: int, fill: float) -> tuple[KVCache, np.ndarray]:
    shape = (1, HEADS, length, DIM)
    keys = [np.full(shape, fill + i, dtype=np.float32) for i in range(LAYERS)]
    values = [np.full(shape, -fill - i, dtype=np.float32) for i in range(LAYERS)]
    return KVCache(keys, values), np.ones((1, length), dtype=np.int64)


def test_admit_left_pads_the_shorter_past_and_masks_it():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    batch.admit(*_prefilled(3, 1.0))
    batch.admit(*_prefilled(7, 2.0))
    assert batch.rows == 2 and batch.cache.length == 7
    assert batch.mask.tolist() == [[0, 0, 0, 0, 1, 1, 1], [1] * 7]
    assert batch.positions.tolist() == [3, 7]
    assert np.all(batch.cache.keys[1][0, :, :4] == 0) and np.all(batch.cache.keys[1][0, :, 4:] == 2.0)
    assert np.all(batch.cache.values[0][1] == -2.0)
    inputs = batch.step_inputs()
    assert inputs["attention_mask"].shape == (2, 8) and inputs["position_ids"].tolist() == [[3], [7]]


def test_admit_pads_the_running_rows_when_the_new_prompt_is_longer():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    batch.admit(*_prefilled(2, 1.0))
    batch.admit(*_prefilled(5, 2.0))
    assert batch.mask[0].tolist() == [0, 0, 0, 1, 1]
    assert np.all(batch.cache.keys[0][0, :, :3] == 0) and np.all(batch.cache.keys[0][0, :, 3:] == 1.0)


def test_keep_drops_rows_and_trims_columns_padded_in_every_row():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    for length, fill in ((2, 1.0), (9, 2.0), (4, 3.0)):
        batch.admit(*_prefilled(length, fill))
    batch.keep(np.array([0, 2]))  # the longest row leaves: 5 leading columns are padding everywhere
    assert batch.cache.length == 4 and batch.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch.positions.tolist() == [2, 4]
    assert np.all(batch.cache.keys[0][1] == 3.0)
    batch.keep(np.array([], dtype=np.int64))
    assert batch.rows == 0 and batch.cache.length == 0


def test_advanced_counts_the_step_in_mask_and_positions():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    batch.admit(*_prefilled(3, 1.0))
    grown = [np.concatenate([k, k[:, :, :1]], axis=2) for k in batch.cache.keys]  # what a step returns
    batch.cache.update({**{f"present_key.{i}": k for i, k in enumerate(grown)},
                        **{f"present_value.{i}": k for i, k in enumerate(grown)}})
    batch.advanced()
    assert batch.mask.tolist() == [[1, 1, 1, 1]] and batch.positions.tolist() == [4]


def test_a_preallocated_cache_cannot_join():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    with pytest.raises(ValueError, match="micro-batch"):
        batch.admit(KVCache.preallocated(1, LAYERS, HEADS, DIM, 8), np.ones((1, 0), dtype=np.int64))


def _encoded(source: int, fill: float) -> dict[str, np.ndarray]:
    cross = {f"cross_key.{i}": np.full((1, HEADS, source, DIM), fill, dtype=np.float32) for i in range(LAYERS)}
    cross.update({f"cross_value.{i}": np.full((1, HEADS, source, DIM), -fill, dtype=np.float32) for i in range(LAYERS)})
    return {**cross, "encoder_attention_mask": np.ones((1, source), dtype=np.int64)}


def test_encoder_values_are_right_padded_and_trimmed_when_the_longest_source_leaves():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    batch.admit(*_prefilled(1, 1.0), _encoded(4, 1.0))
    batch.admit(*_prefilled(2, 2.0), _encoded(9, 2.0))
    batch.admit(*_prefilled(1, 3.0), _encoded(6, 3.0))
    inputs = batch.step_inputs()
    assert inputs["encoder_attention_mask"].tolist()[0] == [1] * 4 + [0] * 5
    assert inputs["cross_key.1"].shape == (3, HEADS, 9, DIM)
    assert np.all(inputs["cross_key.1"][0, :, 4:] == 0) and np.all(inputs["cross_value.0"][1] == -2.0)
    batch.keep(np.array([0, 2]))
    assert batch.encoder["encoder_attention_mask"].shape == (2, 6)
    assert np.all(batch.encoder["cross_key.0"][1] == 3.0) and batch.encoder["cross_value.1"].shape == (2, HEADS, 6, DIM)


def test_a_vacated_slot_is_masked_held_at_position_0_and_refilled_in_place():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    for length, fill in ((6, 1.0), (3, 2.0), (4, 3.0)):
        batch.admit(*_prefilled(length, fill), _encoded(length + 1, fill))
    keys = batch.cache.keys[0]
    batch.vacate(np.array([0]))  # the longest row leaves: its 2 leading-only columns are trimmed
    assert batch.free.tolist() == [True, False, False] and batch.cache.length == 4
    assert batch.mask.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]] and batch.positions.tolist() == [0, 3, 4]
    assert np.shares_memory(batch.cache.keys[0], keys), "vacate copies nothing"
    batch.step_inputs()
    grown = {f"present_{kind}.{i}": np.concatenate([a, a[:, :, :1]], axis=2)  # what a step returns
             for kind, arrays in (("key", batch.cache.keys), ("value", batch.cache.values))
             for i, a in enumerate(arrays)}  # fmt: skip
    batch.cache.update(grown)
    batch.advanced()
    assert batch.mask[0].tolist() == [0] * 5 and batch.positions.tolist() == [0, 4, 5]  # its step counts nothing
    cache, mask = _prefilled(2, 9.0)
    assert batch.place(np.array([0]), cache, mask, _encoded(5, 9.0))
    assert batch.free.tolist() == [False] * 3 and batch.positions.tolist() == [2, 4, 5]
    assert batch.mask[0].tolist() == [0, 0, 0, 1, 1]
    assert np.all(batch.cache.keys[1][0, :, 3:] == 10.0) and np.all(batch.cache.values[1][0, :, 3:] == -10.0)
    assert np.all(batch.cache.keys[0][2] == 3.0) and np.all(batch.cache.values[0][2] == -3.0)  # others kept
    assert batch.encoder["encoder_attention_mask"][0].tolist() == [1] * 5 + [0] * 2
    assert np.all(batch.encoder["cross_key.0"][0, :, :5] == 9.0) and np.all(batch.encoder["cross_key.0"][0, :, 5:] == 0)


def test_place_refuses_rows_that_need_a_larger_array():
    batch = RunningBatch(LAYERS, HEADS, DIM)
    batch.admit(*_prefilled(3, 1.0), _encoded(4, 1.0))
    batch.admit(*_prefilled(3, 2.0), _encoded(4, 2.0))
    batch.vacate(np.array([1]))
    before = batch.mask.copy()
    assert not batch.place(np.array([1]), *_prefilled(5, 3.0), _encoded(4, 3.0))  # a longer past
    assert not batch.place(np.array([1]), *_prefilled(2, 3.0), _encoded(6, 3.0))  # a longer source
    assert batch.free.tolist() == [False, True] and np.array_equal(batch.mask, before)
