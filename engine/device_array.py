"""Plain data the device loop passes around: a handle to a tensor that lives on a runtime's
device, and the few candidates a device-side selector sends back instead of full logits; and
the tokens a decoder graph's greedy head already chose (export/greedy_head.py).

No backend is imported here: a `DeviceArray` holds an opaque handle (an onnxruntime OrtValue
in seqport.runtimes.ort_device) plus the shape and dtype the engine checks feeds against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


@dataclass(frozen=True)
class DeviceArray:
    """A tensor kept on a runtime's device.

    Args:
        handle: the backend's value (never read by the engine).
        shape: its shape.
        dtype: its numpy dtype.
        keepalive: host memory the handle may still reference (CPU values wrap numpy buffers).
    """

    handle: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    keepalive: Any = None

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Candidates:
    """The k best tokens of each row, as a device selector returns them.

    Args:
        values: float64 (N, k) scores of the candidates (raw logits for greedy search and
            sampling, log-probabilities for beam search).
        ids: int64 (N, k) their token ids.
        normalizer: float64 (N,) log-sum-exp of the whole row when the processed distribution
            is the full vocabulary (greedy: logprob = value - normalizer); None when the
            candidates are the whole processed distribution (top-k sampling, beams).
    """

    values: np.ndarray
    ids: np.ndarray
    normalizer: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> Candidates:
        normalizer = None if self.normalizer is None else self.normalizer[rows]
        return Candidates(self.values[rows], self.ids[rows], normalizer)

    def by_id(self) -> Candidates:
        """The same candidates ordered by token id in every row (the vocabulary's order, so
        inverse-CDF sampling and first-on-ties argmax pick what they pick over full logits)."""
        order = np.argsort(self.ids, axis=-1, kind="stable")  # (N, k)
        values = np.take_along_axis(self.values, order, axis=-1)
        return Candidates(values, np.take_along_axis(self.ids, order, axis=-1), self.normalizer)


class Chosen(NamedTuple):
    """The tokens a decoder's greedy head chose (its `greedy_ids` / `greedy_logprobs` outputs):
    plain greedy search reads them instead of the (N, V) logits. A NamedTuple, not a dataclass:
    one is made every decode step.

    Args:
        ids: int64 (N,) each row's argmax (the first on ties).
        logprobs: float32 (N,) its log-softmax over the whole vocabulary.
        logits: the step's last-position logits float (N, V) beside them, or None: a step passes
            them so that min_new_tokens can be honoured on the rare step whose argmax is a
            forbidden EOS (search.TokenSearch._chosen_without_eos), unread otherwise.
    """

    ids: np.ndarray
    logprobs: np.ndarray
    logits: np.ndarray | None = None
