"""Cheap checks on every step's logits, so a broken graph or impossible options fail loudly
instead of decoding garbage (issue #12: NaN logits made greedy pick id 0 forever).

One max-reduction per row catches both cases: NaN anywhere in a row makes its max NaN, +inf
makes it inf, and a row where every token is -inf has max -inf. A -inf entry alone is fine: the
model or a processor may forbid single tokens. Cost on float32 (8, 32000): docs/reliability.md.
"""

from __future__ import annotations

import numpy as np

from seqport.engine.errors import ConfigError, RuntimeFailure


def check_finite_logits(
    logits: np.ndarray, step: int, sources: np.ndarray, top: np.ndarray | None = None
) -> None:
    """Raise if a row of the model's raw logits holds NaN or +inf, or is -inf everywhere.

    Args:
        logits: float (N, V) as the decoder returned them, before any processor.
        step: decoder calls so far in this request, this one included (1 = the prefill).
        sources: int64 (N,) the input index each row serves.
        top: float (N,) each row's max when the caller has it (plain greedy: the logit at the
            argmax, which numpy puts on the first NaN), saving the pass over (N, V).

    Raises:
        RuntimeFailure: naming the step, the row, its input and what was found.
    """
    top = logits.max(axis=-1) if top is None else top  # (N,)
    if np.isfinite(top).all():
        return
    row = int(np.flatnonzero(~np.isfinite(top))[0])
    values = logits[row]
    found = "NaN" if np.isnan(values).any() else "+inf" if np.isposinf(values).any() else "-inf everywhere"
    raise RuntimeFailure(
        f"the model's logits are not finite at decoding step {step}, row {row} (input {int(sources[row])}): "
        f"{found}. The exported graph is numerically unstable on these tokens (an fp16 overflow or an "
        "unstable log/exp in the model); re-export in fp32 or fix the model, then validate on real inputs"
    )


def check_finite_logprobs(logprobs: np.ndarray, step: int, sources: np.ndarray) -> None:
    """Raise if a row's chosen log-probability from the decoder's greedy head is not finite:
    that row's logits held NaN or +inf, or were -inf everywhere (export/greedy_head.py).

    Args:
        logprobs: float (N,) the head's log-probability of each row's argmax.
        step, sources: as for check_finite_logits.

    Raises:
        RuntimeFailure: naming the step, the row and its input.
    """
    if np.isfinite(logprobs).all():
        return
    row = int(np.flatnonzero(~np.isfinite(logprobs))[0])
    raise RuntimeFailure(
        f"the model's logits are not finite at decoding step {step}, row {row} (input {int(sources[row])}): "
        "NaN, +inf or -inf everywhere (the greedy head's log-probability is "
        f"{float(logprobs[row])}). The exported graph is numerically unstable on these tokens (an fp16 "
        "overflow or an unstable log/exp in the model); re-export in fp32 or fix the model, then validate "
        "on real inputs"
    )


def check_some_token_allowed(top: np.ndarray, step: int, sources: np.ndarray) -> None:
    """Raise if the processors left a row with every token at -inf (nothing can be chosen).

    Args:
        top: float (N,) each row's best processed score.
        step: as for check_finite_logits.
        sources: int64 (N,) the input index each row serves.

    Raises:
        ConfigError: naming the step and the input, and the options that forbid tokens.
    """
    if not np.isneginf(top).any():
        return
    row = int(np.flatnonzero(np.isneginf(top))[0])
    raise ConfigError(
        f"every token is forbidden at decoding step {step} for input {int(sources[row])}: the options "
        "(suppress_tokens, bad_words_ids, min_new_tokens, no_repeat_ngram_size, forced_bos_token_id) "
        "leave nothing to generate; allow more tokens"
    )
