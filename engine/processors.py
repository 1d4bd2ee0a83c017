"""Logits processors: small functions applied in a list, in transformers' order.

A processor maps (scores float (N, V), history int64 (N, L), step) → new scores, where
`history` is each row's whole decoder sequence so far (decoder start, forced prefix or prompt,
then the generated tokens: transformers' `input_ids`) and `step` is how many tokens have been
generated (the prefix/prompt not counted). Greedy search and sampling process the raw logits;
beam search processes log-softmaxed scores, as transformers does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from seqport.engine import sampling
from seqport.engine.config import GenerationConfig

Processor = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def repetition_penalty(scores: np.ndarray, history: np.ndarray, step: int, penalty: float) -> np.ndarray:
    """Tokens already in a row's history: negative scores × penalty, positive ones ÷ penalty
    (Keskar et al. 2019, CTRL, arXiv:1909.05858)."""
    seen = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(seen, history, True, axis=-1)
    penalised = np.where(scores < 0, scores * penalty, scores / penalty)
    return np.where(seen, penalised, scores)


def no_repeat_ngram(scores: np.ndarray, history: np.ndarray, step: int, size: int) -> np.ndarray:
    """Ban every token that would complete an n-gram of `size` already in the row's history."""
    length = history.shape[1]
    if length < size:
        return scores
    windows = sliding_window_view(history, size, axis=1)  # (N, L - size + 1, size)
    suffix = history[:, length - size + 1 :]  # (N, size - 1): what the next token would extend
    matches = np.all(windows[:, :, :-1] == suffix[:, None, :], axis=-1)  # (N, windows)
    banned = np.zeros(scores.shape, dtype=bool)
    rows, cols = np.nonzero(matches)
    banned[rows, windows[rows, cols, -1]] = True
    return np.where(banned, -np.inf, scores)


def bad_words(scores: np.ndarray, history: np.ndarray, step: int, words: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Ban single-token words always, and a longer word's last token when the history ends
    with the rest of it."""
    banned = np.zeros(scores.shape, dtype=bool)
    for word in words:
        *prefix, last = word
        if len(prefix) > history.shape[1]:
            continue
        rows = np.all(history[:, history.shape[1] - len(prefix) :] == prefix, axis=-1) if prefix else True
        banned[:, last] |= rows
    return np.where(banned, -np.inf, scores)


def min_new_tokens(
    scores: np.ndarray, history: np.ndarray, step: int, minimum: int, eos: tuple[int, ...]
) -> np.ndarray:
    """Forbid every EOS id while fewer than `minimum` tokens have been generated."""
    if step >= minimum:
        return scores
    scores = scores.copy()
    scores[:, list(eos)] = -np.inf
    return scores


def forced_first_token(scores: np.ndarray, history: np.ndarray, step: int, token: int) -> np.ndarray:
    """At the first generated position only `token` is possible (its score becomes 0)."""
    if step != 0:
        return scores
    forced = np.full_like(scores, -np.inf)
    forced[:, token] = 0.0
    return forced


def forced_last_token(
    scores: np.ndarray, history: np.ndarray, step: int, last_step: int, tokens: tuple[int, ...]
) -> np.ndarray:
    """At the last step a row may generate (max_new_tokens - 1), only `tokens` are possible
    (their scores become 0): transformers' ForcedEOSTokenLogitsProcessor at max_length - 1."""
    if step != last_step:
        return scores
    forced = np.full_like(scores, -np.inf)
    forced[:, list(tokens)] = 0.0
    return forced


def suppress(scores: np.ndarray, history: np.ndarray, step: int, tokens: tuple[int, ...]) -> np.ndarray:
    """These token ids are never generated."""
    scores = scores.copy()
    scores[:, list(tokens)] = -np.inf
    return scores


def _warp(scores: np.ndarray, history: np.ndarray, step: int, fn: Callable, value: float) -> np.ndarray:
    return fn(scores, value)


def build_processors(config: GenerationConfig, eos: tuple[int, ...]) -> list[Processor]:
    """The processors `config` asks for, in transformers' _get_logits_processor order; the
    sampling filters (temperature, top-k, top-p, min-p) come last and only with do_sample."""
    c = config
    table: list[tuple[bool, Processor]] = [
        (c.repetition_penalty != 1.0, partial(repetition_penalty, penalty=c.repetition_penalty)),
        (c.no_repeat_ngram_size > 0, partial(no_repeat_ngram, size=c.no_repeat_ngram_size)),
        (bool(_bad_words(c, eos)), partial(bad_words, words=_bad_words(c, eos))),
        (c.min_new_tokens > 0 and bool(eos), partial(min_new_tokens, minimum=c.min_new_tokens, eos=eos)),
        (c.forced_bos_token_id is not None, partial(forced_first_token, token=c.forced_bos_token_id)),
        (
            bool(c.forced_eos_token_id),
            partial(forced_last_token, last_step=c.max_new_tokens - 1, tokens=c.forced_eos_token_id),
        ),
        (bool(c.suppress_tokens), partial(suppress, tokens=c.suppress_tokens)),
    ]
    if c.do_sample:
        table += [
            (c.temperature != 1.0, partial(_warp, fn=sampling.apply_temperature, value=c.temperature)),
            (c.top_k != 0, partial(_warp, fn=sampling.top_k_filter, value=c.top_k)),
            (c.top_p < 1.0, partial(_warp, fn=sampling.top_p_filter, value=c.top_p)),
            (c.min_p > 0.0, partial(_warp, fn=sampling.min_p_filter, value=c.min_p)),
        ]
    return [processor for wanted, processor in table if wanted]


def _bad_words(config: GenerationConfig, eos: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    # transformers drops a bad word that is a lone EOS id: banning EOS would never end a sequence
    return tuple(w for w in config.bad_words_ids if not (len(w) == 1 and w[0] in eos))


def apply(processors: list[Processor], scores: np.ndarray, history: np.ndarray, step: int) -> np.ndarray:
    """Run the processors in order on float (N, V) scores."""
    for processor in processors:
        scores = processor(scores, history, step)
    return scores
