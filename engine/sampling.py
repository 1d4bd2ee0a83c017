"""Sampling as small pure functions over numpy logits (gpt-fast's generate.py style).

Filters return new float arrays with removed tokens set to -inf and follow transformers'
logits warpers exactly (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
MinPLogitsWarper). Every random function takes an explicit np.random.Generator per row; nothing
here reads global random state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """float (..., V) → float64 log-probabilities (-inf entries stay -inf)."""
    scores = scores.astype(np.float64)
    top = scores.max(axis=-1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(axis=-1, keepdims=True))


def softmax(scores: np.ndarray) -> np.ndarray:
    """float (..., V) → float64 probabilities."""
    return np.exp(log_softmax(scores))


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """scores / temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return scores / temperature


def top_k_filter(scores: np.ndarray, k: int, min_keep: int = 1) -> np.ndarray:
    """Keep the k highest scores per row (ties with the k-th are kept too), -inf elsewhere.

    Args:
        scores: float (N, V).
        k: how many to keep; 0 or k >= V keeps everything.
        min_keep: lower bound on k (beam sampling keeps EOS + 1).
    """
    if k == 0 or max(k, min_keep) >= scores.shape[-1]:
        return scores
    k = max(k, min_keep)
    kth = np.partition(scores, -k, axis=-1)[:, -k, None]  # (N, 1) the k-th highest
    return np.where(scores < kth, -np.inf, scores)


def top_p_filter(scores: np.ndarray, p: float, min_keep: int = 1) -> np.ndarray:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    Exactly transformers' TopPLogitsWarper: sort ascending, drop tokens whose cumulative
    probability is <= 1 - p, always keep the `min_keep` most likely.

    Args:
        scores: float (N, V).
        p: probability mass to keep, in (0, 1]; 1 keeps everything.
    """
    if p >= 1.0:
        return scores
    order = np.argsort(scores, axis=-1, kind="stable")  # (N, V) ascending
    cumulative = np.cumsum(softmax(np.take_along_axis(scores, order, axis=-1)), axis=-1)
    remove_sorted = cumulative <= 1.0 - p
    remove_sorted[:, -min_keep:] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, scores)


def min_p_filter(scores: np.ndarray, min_p: float, min_keep: int = 1) -> np.ndarray:
    """Drop tokens whose probability is below min_p times the most likely token's.

    Args:
        scores: float (N, V).
        min_p: in [0, 1); 0 keeps everything.
    """
    if min_p <= 0.0:
        return scores
    probs = softmax(scores)  # (N, V)
    remove = probs < min_p * probs.max(axis=-1, keepdims=True)
    keep = np.argsort(-probs, axis=-1, kind="stable")[:, :min_keep]  # (N, min_keep)
    np.put_along_axis(remove, keep, False, axis=-1)
    return np.where(remove, -np.inf, scores)


def sample(scores: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Draw one token per row from softmax(scores) by inverse CDF.

    Args:
        scores: float (N, V) processed logits; -inf tokens are never drawn.
        rngs: one generator per row; each draw consumes exactly one `random()` of its row's
            generator, so a row's tokens do not depend on the other rows.

    Returns:
        int64 (N,) token ids.
    """
    probs = softmax(scores)  # (N, V)
    cdf = np.cumsum(probs, axis=-1)
    draws = np.array([rng.random() for rng in rngs]) * cdf[:, -1]  # (N,) in [0, total)
    ids = (cdf <= draws[:, None]).sum(axis=-1)  # first index whose cdf exceeds the draw
    last_possible = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(ids, last_possible).astype(np.int64)  # rounding can never pick a 0-prob tail


def greedy(scores: np.ndarray) -> np.ndarray:
    """int64 (N,) argmax of float (N, V) scores (the first on ties, as torch.argmax)."""
    return scores.argmax(axis=-1).astype(np.int64)
