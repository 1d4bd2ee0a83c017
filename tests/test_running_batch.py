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
