"""Scoring given targets under a model (teacher forcing): the numpy half of `model.score()`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seqport.engine.errors import InputError
from seqport.engine.sampling import log_softmax


@dataclass(frozen=True)
class ScoreResult:
    """Log-probabilities of one target under the model.

    Args:
        ids: the target ids scored (as given, or as the tokenizer encoded the text).
        token_logprobs: log p(ids[t] | source, ids[:t]) for every t.
        score: their sum, the log-probability of the whole target.
    """

    ids: list[int]
    token_logprobs: list[float]
    score: float


def check_targets(targets: Sequence[Sequence[int]], vocab_size: int, max_len: int) -> list[list[int]]:
    """Non-empty id lists inside the vocabulary and at most `max_len` long.

    Raises:
        InputError: naming the offending target and what to do.
    """
    checked = []
    for index, row in enumerate(targets):
        ids = [int(i) for i in row]
        if not ids:
            raise InputError(f"target {index} has no tokens: pass at least one token id")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise InputError(f"target {index} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
        if len(ids) > max_len:
            raise InputError(
                f"target {index} has {len(ids)} tokens, more than the {max_len} the model can score; shorten it"
            )
        checked.append(ids)
    return checked


def teacher_forcing_inputs(targets: list[list[int]], start: Sequence[int], pad_id: int) -> np.ndarray:
    """Decoder inputs that predict every target token: start + target[:-1], right-padded.

    Args:
        targets: B id lists.
        start: the tokens before the target (the decoder start token).

    Returns:
        int64 (B, T) with T = len(start) - 1 + the longest target; position len(start) - 1 + t
        predicts target[t].
    """
    rows = [list(start) + ids[:-1] for ids in targets]
    width = max(len(row) for row in rows)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def target_logprobs(logits: np.ndarray, targets: list[list[int]], offset: int) -> list[ScoreResult]:
    """Gather each target token's log-probability from teacher-forcing logits.

    Args:
        logits: float (B, T, V) of `teacher_forcing_inputs`; padded positions are ignored.
        targets: the B id lists.
        offset: len(start) - 1, the position that predicts target[0].
    """
    results = []
    for row, ids in enumerate(targets):
        span = log_softmax(logits[row, offset : offset + len(ids)])  # (len, V) float64
        picked = span[np.arange(len(ids)), ids]
        results.append(ScoreResult(list(ids), picked.tolist(), float(picked.sum())))
    return results
