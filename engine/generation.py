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


def decode_loop(
    step: StepFn, search: Search, cache: KVCache, first_tokens: np.ndarray
) -> list[GenerationResult]:
    """prefill → [select → drop/reorder rows → step] until the search says every row is done.

    Args:
        step: runs the model on new tokens of the active rows (see StepFn).
        search: greedy, sampling or beam search; its row_sources() says which input each
            row serves (several rows per input with beams).
        cache: empty self-attention cache with one row per search row.
        first_tokens: int64 (B, T0) per input: the decoder start (+ forced prefix) of an
            encoder-decoder, or the prompt of a decoder-only model.
    """
    tokens = first_tokens[search.row_sources()]  # (N, T0)
    while True:
        logits = step(tokens, cache, search.row_sources())  # (N, V)
        decision = search.update(logits)
        if decision is None:
            return search.finalize()
        if len(decision.rows) != cache.batch or np.any(decision.rows != np.arange(cache.batch)):
            cache.take(decision.rows)  # finished rows leave; beams follow their parent
        tokens = decision.tokens[:, None]  # (N', 1)
