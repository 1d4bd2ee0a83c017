"""Feeding a preallocated (or fused) decoder graph the growing-cache values validation builds.

A preallocated graph gets each past as slots 0..P-1 of a larger buffer whose other slots hold
noise, so validation sees whether the graph writes only the new tokens' slots.
"""

from __future__ import annotations

import numpy as np

#: slots a validation buffer has beyond the step's P+T: filled with noise the mask must hide.
SPARE_SLOTS = 3


def as_buffers(values: dict, case) -> tuple[dict, dict[str, np.ndarray]]:  # case: validate.Case
    """Growing-cache feeds → preallocated ones: each past K/V copied into slots 0..P-1 of a
    buffer of P+T+SPARE_SLOTS slots whose other slots hold noise, cache_position P..P+T-1, and
    a decoder-only mask widened over the buffer with random 0/1 (causality must hide them).

    Returns the feeds and, per present output, the noise its buffer must still hold after the
    written slots.
    """
    rng = np.random.default_rng(case.past * 10 + case.new)
    written = case.past + case.new
    out, spare = dict(values), {}
    for name, past in values.items():
        if not name.startswith("past_"):
            continue
        b, h, _, d = past.shape
        buffer = rng.standard_normal((b, h, written + SPARE_SLOTS, d)).astype(past.dtype)
        buffer[:, :, : case.past] = past
        out[name] = buffer
        spare[name.replace("past_", "present_", 1)] = buffer[:, :, written:].copy()
    out["cache_position"] = np.arange(case.past, written, dtype=np.int64)
    if "attention_mask" in values:
        mask = values["attention_mask"]
        noise = rng.integers(0, 2, (mask.shape[0], SPARE_SLOTS), dtype=mask.dtype)
        out["attention_mask"] = np.concatenate([mask, noise], axis=1)
    return out, spare


def blank_pads(ours: dict, theirs: dict, mask: np.ndarray, logit_slots: np.ndarray) -> None:
    """Zero what left-pad positions produce, in both result sets. A pad query sees no slot, so
    softmax spreads it uniformly over every slot it is given: P+T in PyTorch's growing cache,
    C in a buffer. Real tokens never read those values (the mask hides pad slots)."""
    pad_slots = mask == 0  # (B, P+T)
    for name, expected in theirs.items():
        got = ours[name]
        if name == "logits":  # (B, K, V): queries at logit_slots
            hidden = pad_slots[:, logit_slots]
            got[hidden], expected[hidden] = 0.0, 0.0
        else:  # (B, H, P+T, D)
            hidden = np.broadcast_to(pad_slots[:, None, :, None], got.shape)
            got[hidden], expected[hidden] = 0.0, 0.0
