"""GenerationConfig: one frozen, validated set of decoding options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from seqport.engine.errors import ConfigError

EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options, validated at construction (all problems reported at once).

    Args:
        max_new_tokens: most tokens generated per input (EOS included).
        min_new_tokens: EOS is forbidden before this many tokens.
        do_sample: sample instead of taking the most likely token.
        temperature, top_k, top_p, min_p: sampling filters (top_k 0 and top_p 1.0 disable).
        seed: seed of the sampling generator; same seed, same output.
        num_beams: beam width; 1 = greedy or sampling.
        length_penalty: beam score = sum log p / length ** length_penalty.
        early_stopping: True, False or "never", with transformers' meaning.
        num_return_sequences: hypotheses returned per input (≤ num_beams with beams).
        repetition_penalty: > 1 discourages tokens already generated (CTRL paper).
        no_repeat_ngram_size: forbid repeating any n-gram of this size; 0 disables.
        bad_words_ids: token sequences never generated.
        suppress_tokens: token ids never generated.
        forced_bos_token_id: token forced as the first generated token (mBART language id).
        prefix_ids: target prefix forced after the decoder start token.
        eos_token_ids: ids that end a sequence; empty = the manifest's.
        stop: strings that end generation; the text ends before the stop string.
        truncate: cut inputs longer than the model's max positions instead of raising.
        batch_size: split large input lists into batches of this many inputs; 0 = one batch.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    suppress_tokens: tuple[int, ...] = ()
    forced_bos_token_id: int | None = None
    prefix_ids: tuple[int, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    truncate: bool = False
    batch_size: int = 0

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("invalid GenerationConfig: " + "; ".join(problems))

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with `overrides` applied; an unknown option raises TypeError naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; known options are: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **_normalise(overrides))

    @classmethod
    def from_defaults(cls, defaults: dict[str, Any]) -> GenerationConfig:
        """Build from a manifest's `generation` section (JSON lists become tuples)."""
        return cls().replace(**defaults)


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in ("suppress_tokens", "prefix_ids", "eos_token_ids"):
        if out.get(name) is not None:
            out[name] = tuple(out[name])
    if out.get("stop") is not None:
        out["stop"] = (out["stop"],) if isinstance(out["stop"], str) else tuple(out["stop"])
    if out.get("bad_words_ids") is not None:
        out["bad_words_ids"] = tuple(tuple(words) for words in out["bad_words_ids"])
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problems(c: GenerationConfig) -> list[str]:
    checks = [
        (_is_int(c.max_new_tokens) and c.max_new_tokens >= 1, "max_new_tokens must be an integer >= 1"),
        (_is_int(c.min_new_tokens) and 0 <= c.min_new_tokens, "min_new_tokens must be an integer >= 0"),
        (_is_int(c.num_beams) and c.num_beams >= 1, "num_beams must be an integer >= 1"),
        (_is_int(c.num_return_sequences) and c.num_return_sequences >= 1, "num_return_sequences must be >= 1"),
        (c.temperature > 0, "temperature must be > 0"),
        (_is_int(c.top_k) and c.top_k >= 0, "top_k must be an integer >= 0 (0 disables)"),
        (0 < c.top_p <= 1, "top_p must be in (0, 1]"),
        (0 <= c.min_p < 1, "min_p must be in [0, 1)"),
        (c.repetition_penalty > 0, "repetition_penalty must be > 0"),
        (_is_int(c.no_repeat_ngram_size) and c.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0"),
        (c.early_stopping in EARLY_STOPPING, f"early_stopping must be one of {EARLY_STOPPING}"),
        (_is_int(c.batch_size) and c.batch_size >= 0, "batch_size must be an integer >= 0 (0: one batch)"),
        (all(_is_int(i) and i >= 0 for i in c.eos_token_ids), "eos_token_ids must be non-negative integers"),
        (all(isinstance(s, str) and s for s in c.stop), "stop strings must be non-empty strings"),
        (all(len(w) >= 1 for w in c.bad_words_ids), "each bad_words_ids entry needs at least one id"),
        (c.seed is None or _is_int(c.seed), "seed must be an integer or None"),
    ]
    problems = [f"{message}, got {_value_of(message, c)!r}" for ok, message in checks if not ok]
    if c.num_beams > 1 and c.num_return_sequences > c.num_beams:
        problems.append(
            f"num_return_sequences ({c.num_return_sequences}) cannot exceed num_beams ({c.num_beams})"
        )
    if c.num_beams == 1 and not c.do_sample and c.num_return_sequences > 1:
        problems.append("num_return_sequences > 1 needs num_beams > 1 or do_sample=True")
    if c.min_new_tokens > c.max_new_tokens:
        problems.append(f"min_new_tokens ({c.min_new_tokens}) exceeds max_new_tokens ({c.max_new_tokens})")
    return problems


def _value_of(message: str, c: GenerationConfig) -> Any:
    return getattr(c, message.split()[0], None)
