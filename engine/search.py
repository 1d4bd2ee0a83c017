"""Search strategies: choose the next tokens from a step's logits and say which rows go on.

Every strategy has the same shape (whisper's TokenDecoder): `row_sources()` says which input
each active row serves, `update(logits)` picks tokens and returns a `StepDecision` (None once
every row is finished), `finalize()` returns the results in input order. The loop in
generation.py drives any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError
from seqport.engine.results import GenerationResult, Sequence


@dataclass(frozen=True)
class StepDecision:
    """tokens: int64 (N',) next input per surviving row; rows: int64 (N',) the row each one
    continues (indices into the current rows: used to reorder/select the KV cache)."""

    tokens: np.ndarray
    rows: np.ndarray


class Search(Protocol):
    def row_sources(self) -> np.ndarray: ...

    def update(self, logits: np.ndarray) -> StepDecision | None: ...

    def finalize(self) -> list[GenerationResult]: ...


def log_softmax_at(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log softmax(logits)[row, ids[row]] for float (N, V) logits, without the full (N, V) array."""
    top = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]  # (N,)
    return logits[np.arange(len(ids)), ids] - lse


class GreedySearch:
    """Argmax at every step; a row leaves the active batch at EOS or max_new_tokens."""

    def __init__(self, batch: int, eos_ids: tuple[int, ...], max_new_tokens: int) -> None:
        self._eos = np.asarray(eos_ids, dtype=np.int64)
        self._max_new = max_new_tokens
        self._ids: list[list[int]] = [[] for _ in range(batch)]
        self._logprobs: list[list[float]] = [[] for _ in range(batch)]
        self._finish = ["length"] * batch
        self._active = np.arange(batch)  # input index of each active row

    def row_sources(self) -> np.ndarray:
        return self._active

    def update(self, logits: np.ndarray) -> StepDecision | None:
        next_ids = logits.argmax(axis=-1)  # (N,)
        logprobs = log_softmax_at(logits, next_ids)
        is_eos = np.isin(next_ids, self._eos)
        keep = []
        for row, source in enumerate(self._active):
            self._ids[source].append(int(next_ids[row]))
            self._logprobs[source].append(float(logprobs[row]))
            if is_eos[row]:
                self._finish[source] = "eos"
            elif len(self._ids[source]) < self._max_new:
                keep.append(row)
        rows = np.asarray(keep, dtype=np.int64)
        self._active = self._active[rows]
        return StepDecision(next_ids[rows].astype(np.int64), rows) if keep else None

    def finalize(self) -> list[GenerationResult]:
        results = []
        for ids, logprobs, finish in zip(self._ids, self._logprobs, self._finish):
            content = ids[:-1] if finish == "eos" else ids
            sequence = Sequence(content, logprobs[: len(content)], float(sum(logprobs)), finish)
            results.append(GenerationResult([sequence]))
        return results


def make_search(config: GenerationConfig, batch: int, eos_ids: tuple[int, ...]) -> Search:
    """The search strategy `config` asks for, over `batch` inputs.

    Raises:
        ConfigError: an option this engine does not implement yet (never silently ignored).
    """
    unsupported = [
        name
        for name, default in GenerationConfig.__dataclass_fields__.items()
        if name not in _GREEDY_OPTIONS and getattr(config, name) != default.default
    ]
    if unsupported:
        raise ConfigError(f"generation options not supported yet: {', '.join(unsupported)}")
    return GreedySearch(batch, eos_ids, config.max_new_tokens)


_GREEDY_OPTIONS = {"max_new_tokens", "eos_token_ids", "truncate", "batch_size", "seed"}
