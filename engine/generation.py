"""The decode loop, shared by every model kind and search strategy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from seqport.engine.kv_cache import KVCache
from seqport.engine.results import GenerationResult
from seqport.engine.search import Search

#: (tokens int64 (N, T), cache, row_sources int64 (N,)) → last-position logits float32 (N, V);
#: it runs the decoder and updates the cache with the step's present K/V.
StepFn = Callable[[np.ndarray, KVCache, np.ndarray], np.ndarray]


def decode_loop(step: StepFn, search: Search, cache: KVCache) -> list[GenerationResult]:
    """prefill → [select → drop/reorder rows → step] until the search says every row is done."""
    tokens = search.start_tokens()  # (N, T0): decoder start (+ forced prefix)
    while True:
        logits = step(tokens, cache, search.row_sources())  # (N, V)
        decision = search.update(logits)
        if decision is None:
            return search.finalize()
        if len(decision.rows) != cache.batch or np.any(decision.rows != np.arange(cache.batch)):
            cache.take(decision.rows)  # finished rows leave; beams follow their parent
        tokens = decision.tokens[:, None]  # (N', 1)
