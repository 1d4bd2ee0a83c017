"""forced_eos_token_id: the option's validation and its processor (transformers' ForcedEOSTokenLogitsProcessor)."""

from __future__ import annotations

import numpy as np
import pytest

from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError
from seqport.engine.processors import build_processors, forced_last_token


def test_an_int_becomes_a_tuple_and_bad_ids_are_refused():
    assert GenerationConfig(forced_eos_token_id=0).forced_eos_token_id == (0,)
    assert GenerationConfig.from_defaults({"forced_eos_token_id": [2, 3]}).forced_eos_token_id == (2, 3)
    with pytest.raises(ConfigError, match="forced_eos_token_id must be non-negative integers"):
        GenerationConfig(forced_eos_token_id=(-1,))
    with pytest.raises(ConfigError, match=r"forced_eos_token_id has ids \[9\]"):
        GenerationConfig(forced_eos_token_id=9).check_token_ids(5)


def test_only_the_last_step_is_forced():
    scores = np.arange(10, dtype=np.float32).reshape(2, 5)
    history = np.zeros((2, 3), dtype=np.int64)
    assert forced_last_token(scores, history, 2, last_step=3, tokens=(1,)) is scores
    forced = forced_last_token(scores, history, 3, last_step=3, tokens=(1, 4))
    assert (forced[:, [1, 4]] == 0).all() and np.isneginf(forced[:, [0, 2, 3]]).all()


def test_built_from_the_config_with_max_new_tokens():
    config = GenerationConfig(max_new_tokens=4, forced_eos_token_id=0)
    (processor,) = build_processors(config, (0,))
    scores = np.ones((1, 3), dtype=np.float32)
    assert processor(scores, np.zeros((1, 1), dtype=np.int64), 2) is scores
    assert processor(scores, np.zeros((1, 1), dtype=np.int64), 3).argmax() == 0
    assert build_processors(GenerationConfig(), (0,)) == []
