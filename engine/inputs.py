"""Turn what a user passes (text, texts, token ids) into checked id lists and batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from seqport.engine.errors import InputError

logger = logging.getLogger(__name__)


_ROW_TYPES = (list, tuple, np.ndarray)


def is_token_input(inputs: object) -> bool:
    """True for a list of id lists (or a 2-D int array); False for text.

    Raises:
        InputError: id lists that hold something other than integers (floats, bools, None):
            they are refused here, before anything casts them (see `as_id_lists`).
    """
    if isinstance(inputs, np.ndarray):
        tokens = inputs.ndim == 2
    else:
        tokens = (
            isinstance(inputs, (list, tuple))
            and len(inputs) > 0
            and any(isinstance(row, _ROW_TYPES) for row in inputs)
        )
    if tokens:
        as_id_lists(inputs)  # type: ignore[arg-type]
    return tokens


def as_id_lists(inputs: Sequence[Sequence[int]] | np.ndarray) -> list[list[int]]:
    """Id lists (or a 2-D integer array) as plain int lists, refusing anything that is not an integer.

    Raises:
        InputError: naming the input: a row that is not a list, or an element that is a float,
            a bool, None or another non-integer (a float id is never cast silently).
    """
    rows = []
    for index, row in enumerate(inputs):
        if not isinstance(row, _ROW_TYPES):
            raise InputError(
                f"input {index} is a {type(row).__name__}: token-id inputs must all be lists of int ids"
            )
        if isinstance(row, np.ndarray):
            if row.ndim != 1 or not (np.issubdtype(row.dtype, np.integer) or row.size == 0):
                raise InputError(
                    f"input {index} is a {row.ndim}-D {row.dtype} array: token ids must be a 1-D integer array"
                )
            rows.append(row.tolist())
            continue
        bad = [i for i in row if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))]
        if bad:
            raise InputError(
                f"input {index} holds {type(bad[0]).__name__} {bad[0]!r}: token ids must be integers "
                "(floats, bools and None are refused, never cast)"
            )
        rows.append([int(i) for i in row])
    return rows


def as_texts(inputs: str | Sequence[str]) -> list[str]:
    """A text or a list of texts; empty (or whitespace-only) texts and invalid Unicode are an error."""
    if inputs is None:
        raise InputError("inputs is None: pass a text, a list of texts or a list of token-id lists")
    if not isinstance(inputs, (str, list, tuple)):
        raise InputError(f"inputs is a {type(inputs).__name__}: pass a text, a list of texts or token-id lists")
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise InputError("no inputs given: pass a text or a non-empty list of texts")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            hint = " (a flat list of ids: wrap it as [[...]])" if isinstance(text, (int, np.integer)) else ""
            raise InputError(f"input {index} is a {type(text).__name__}, expected str or token ids{hint}")
        if not text.strip():
            raise InputError(f"input {index} is empty: pass a non-empty text")
        check_unicode(text, f"input {index}")
    return texts


def check_unicode(text: str, what: str) -> None:
    """Raise InputError if `text` cannot be encoded as UTF-8 (a lone surrogate, as Python makes
    from undecodable bytes with errors="surrogateescape").

    Args:
        what: how the message names the text, e.g. "input 3".
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{what} is not valid Unicode: {exc.object[exc.start : exc.end]!r} at character {exc.start} "
            "(a lone surrogate, e.g. from bytes that are not UTF-8); decode the text as UTF-8 first"
        ) from None


def check_ids(
    batch: Sequence[Sequence[int]],
    vocab_size: int,
    max_len: int,
    truncate: bool,
    keep_last: tuple[int, ...] = (),
) -> list[list[int]]:
    """Validate id lists: integers (see `as_id_lists`), non-empty, in the vocabulary, at most
    `max_len` long.

    Args:
        keep_last: ids (EOS) kept at the end when `truncate` cuts an input.

    Raises:
        InputError: naming the offending input and what to do.
    """
    checked = []
    for index, ids in enumerate(as_id_lists(batch)):
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
