"""The decode loop, shared by every model kind, placement and search strategy, and the
strategy choice. (The model base that feeds it is engine/generating_model.py; the options are
config.GenerationConfig.)"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from seqport.engine.beam import BeamSearch
from seqport.engine.config import GenerationConfig
from seqport.engine.kv_cache import KVCache
from seqport.engine.processors import build_processors
from seqport.engine.results import GenerationResult
from seqport.engine.search import Sampler, Search, StepDecision, TokenSearch, greedy_chooser
from seqport.engine.stopping import StopStrings


class StepFn(Protocol):
    """Runs the decoder on the new tokens of the active rows and stores the step's present K/V
    in the cache (engine/decoder_step.py for the model kinds)."""

    def __call__(self, tokens: np.ndarray, cache: KVCache, row_sources: np.ndarray) -> np.ndarray:
        """tokens int64 (N, T), row_sources int64 (N,) → last-position logits float32 (N, V) (or
        the placement's Candidates)."""
        ...


def decode_steps(
    step: StepFn, search: Search, cache: KVCache, first_tokens: np.ndarray
) -> Iterator[StepDecision | None]:
    """prefill → [select → drop/reorder rows → step], yielding each step's decision.

    Args:
        step: runs the model on new tokens of the active rows (see StepFn).
        search: greedy, sampling or beam search; its row_sources() says which input each
            row serves (several rows per input with beams or several samples).
        cache: empty self-attention cache with one row per search row.
        first_tokens: int64 (B, T0) per input: the decoder start (+ forced prefix) of an
            encoder-decoder, or the prompt of a decoder-only model.

    Yields:
        The search's decision after every step; the last one is None (every row finished).
        The cache is released when the loop ends, fails, or its caller closes it early.
    """
    sources = search.row_sources()
    tokens = first_tokens[sources]  # (N, T0)
    try:
        while True:
            logits = step(tokens, cache, sources)  # (N, V)
            decision = search.update(logits)
            yield decision
            if decision is None:
                return
            if not decision.same_rows:  # same_rows: the rows and their sources stay as they are
                if len(decision.rows) != cache.batch or np.any(decision.rows != np.arange(cache.batch)):
                    cache.take(decision.rows)  # finished rows leave; beams follow their parent
                sources = search.row_sources()
            tokens = decision.tokens[:, None]  # (N', 1)
    finally:
        cache.release()  # device buffers go now, not when the abandoned generator is collected


def decode_loop(step: StepFn, search: Search, cache: KVCache, first_tokens: np.ndarray) -> list[GenerationResult]:
    """Run `decode_steps` to the end; the search's results in input order."""
    for _ in decode_steps(step, search, cache, first_tokens):
        pass
    return search.finalize()


def make_search(
    config: GenerationConfig,
    first_tokens: np.ndarray,
    eos: tuple[int, ...],
    indices: Sequence[int] | None = None,
    stops: StopStrings | None = None,
    *,
    token_search: type[TokenSearch] = TokenSearch,
    beam_search: type[BeamSearch] = BeamSearch,
) -> Search:
    """The search strategy `config` asks for over a batch.

    Args:
        config: validated options.
        first_tokens: int64 (B, T0) of each input (the processors' history starts with it).
        eos: ids that end a sequence.
        indices: each input's position in the caller's whole input list, which seeds its
            sampling generator (default 0..B-1).
        stops: stop strings checker, or None.
        token_search, beam_search: the classes to build (a device placement's requests use
            subclasses that also accept top-k candidates (device_search.py)).
    """
    processors = build_processors(config, eos)
    if config.num_beams > 1:
        return beam_search(first_tokens, eos, config, processors, stops)
    if not config.do_sample:
        return token_search(first_tokens, eos, config.max_new_tokens, processors, greedy_chooser, 1, stops)
    samples = config.num_return_sequences
    indices = range(len(first_tokens)) if indices is None else indices
    chooser = Sampler(config.seed, indices, samples)
    return token_search(first_tokens, eos, config.max_new_tokens, processors, chooser, samples, stops)
