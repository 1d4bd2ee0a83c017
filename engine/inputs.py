"""Turn what a user passes (text, texts, token ids) into checked id lists and batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from seqport.engine.errors import InputError

logger = logging.getLogger(__name__)


def is_token_input(inputs: object) -> bool:
    """True for a list of id lists (or a 2-D int array); False for text."""
    if isinstance(inputs, np.ndarray):
        return inputs.ndim == 2
    return (
        isinstance(inputs, (list, tuple))
        and len(inputs) > 0
        and all(isinstance(row, (list, tuple, np.ndarray)) for row in inputs)
    )


def as_texts(inputs: str | Sequence[str]) -> list[str]:
    """A text or a list of texts; empty (or whitespace-only) texts are an error."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise InputError("no inputs given: pass a text or a non-empty list of texts")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"input {index} is a {type(text).__name__}, expected str or token ids")
        if not text.strip():
            raise InputError(f"input {index} is empty: pass a non-empty text")
    return texts


def check_ids(
    batch: Sequence[Sequence[int]],
    vocab_size: int,
    max_len: int,
    truncate: bool,
    keep_last: tuple[int, ...] = (),
) -> list[list[int]]:
    """Validate id lists: non-empty, in the vocabulary, at most `max_len` long.

    Args:
        keep_last: ids (EOS) kept at the end when `truncate` cuts an input.

    Raises:
        InputError: naming the offending input and what to do.
    """
    checked = []
    for index, row in enumerate(batch):
        ids = [int(i) for i in row]
        if not ids:
            raise InputError(f"input {index} has no tokens: pass at least one token id")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise InputError(
                f"input {index} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
            )
        if len(ids) > max_len:
            if not truncate:
                raise InputError(
                    f"input {index} has {len(ids)} tokens, more than the model's maximum of "
                    f"{max_len}; shorten it or pass truncate=True (--truncate) to cut it"
                )
            tail = [ids[-1]] if ids[-1] in keep_last else []
            logger.warning("input %d truncated from %d to %d tokens", index, len(ids), max_len)
            ids = ids[: max_len - len(tail)] + tail
        checked.append(ids)
    return checked


def pad_batch(batch: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad → input_ids, attention_mask: int64 (B, S)."""
    width = max(len(ids) for ids in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, tokens in enumerate(batch):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def length_sorted_batches(batch: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of the inputs, longest first, in chunks of `batch_size` (0 = one chunk).

    Sorting by length keeps padding (wasted work) low inside each chunk.
    """
    order = sorted(range(len(batch)), key=lambda i: -len(batch[i]))
    size = batch_size or len(order)
    for start in range(0, len(order), size):
        yield order[start : start + size]


def plain_id_range(specials: Sequence[int | None], vocab_size: int) -> tuple[int, int]:
    """[low, high) between the special ids, for random inputs that never hit one: specials at the
    start (most families) and at the end of the vocabulary (Marian's pad is its last id)."""
    special = {i for i in specials if i is not None}
    high = vocab_size
    while high - 1 in special:
        high -= 1
    return max((i for i in special if i < high), default=-1) + 1, high
