"""GenerationConfig: one frozen, validated set of decoding options."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from seqport.engine.errors import ConfigError

EARLY_STOPPING = (True, False, "never")
_ID_TUPLES = ("suppress_tokens", "prefix_ids", "eos_token_ids", "forced_eos_token_id")
#: 4 GiB: far above any sensible request on the bundled models, far below a hang
DEFAULT_MAX_MEMORY_BYTES = 4 * 2**30


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options, validated at construction (all problems reported at once).

    docs/decoding.md describes every option, its exact semantics and its transformers
    equivalent.

    Args:
        max_new_tokens: most tokens generated per input (EOS included; the prefix not).
        min_new_tokens: EOS is forbidden before this many tokens.
        do_sample: sample instead of taking the most likely token.
        temperature, top_k, top_p, min_p: sampling filters (top_k 0, top_p 1.0 and min_p 0.0
            disable); they only apply with do_sample=True.
        seed: sample j of input i draws from np.random.default_rng([seed + i, j]), so the
            same seed gives the same output however the inputs are batched; None = fresh entropy.
        num_beams: beam width; 1 = greedy or sampling.
        length_penalty: beam score = sum log p / generated_length ** length_penalty.
        early_stopping: True, False or "never", with transformers' meaning.
        num_return_sequences: hypotheses returned per input (≤ num_beams with beams).
        repetition_penalty: > 1 discourages tokens already in the sequence (CTRL paper).
        no_repeat_ngram_size: forbid repeating any n-gram of this size; 0 disables.
        bad_words_ids: token sequences never generated.
        suppress_tokens: token ids never generated.
        forced_bos_token_id: token forced as the first generated token (mBART language id).
        forced_eos_token_id: id(s) forced as the last token a row may generate (the
            max_new_tokens-th), as transformers' ForcedEOSTokenLogitsProcessor (Marian); an int
            becomes a 1-tuple; () disables.
        prefix_ids: target prefix forced after the decoder start token (part of the prompt:
            not returned in ids or text).
        eos_token_ids: ids that end a sequence; empty = the manifest's.
        stop: strings that end generation; the text ends before the stop string.
        truncate: cut inputs longer than the model's max positions instead of raising.
        batch_size: split large input lists into batches of this many inputs; 0 = one batch.
        max_memory_bytes: a request whose estimated KV cache and logits (batch × beams ×
            length, engine/memory_estimate.py) exceed this fails with ConfigError before any
            work starts; raise it on a machine with the memory.
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
    forced_eos_token_id: tuple[int, ...] = ()
    prefix_ids: tuple[int, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    truncate: bool = False
    batch_size: int = 0
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES

    def __post_init__(self) -> None:
        for name, value in _normalise(dataclasses.asdict(self)).items():
            object.__setattr__(self, name, value)  # JSON lists → tuples, one stop string → a tuple
        problems = _problems(self)
        if problems:
            raise ConfigError("invalid GenerationConfig: " + "; ".join(problems))

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with `overrides` applied; an unknown option raises TypeError naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; known options are: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_defaults(cls, defaults: dict[str, Any]) -> GenerationConfig:
        """Build from a manifest's `generation` section (JSON lists become tuples)."""
        return cls().replace(**defaults)

    def check_token_ids(self, vocab_size: int) -> None:
        """Raise ConfigError naming every option that holds an id outside [0, vocab_size), or
        when suppress_tokens and single-token bad_words_ids forbid the whole vocabulary."""
        options = {
            "prefix_ids": self.prefix_ids,
            "suppress_tokens": self.suppress_tokens,
            "eos_token_ids": self.eos_token_ids,
            "bad_words_ids": [i for words in self.bad_words_ids for i in words],
            "forced_bos_token_id": [] if self.forced_bos_token_id is None else [self.forced_bos_token_id],
            "forced_eos_token_id": self.forced_eos_token_id,
        }
        bad = {name: [i for i in ids if not 0 <= i < vocab_size] for name, ids in options.items()}
        problems = [f"{name} has ids {ids[:5]}" for name, ids in bad.items() if ids]
        if problems:
            raise ConfigError(f"token ids outside the model's vocabulary [0, {vocab_size}): {'; '.join(problems)}")
        forbidden = set(self.suppress_tokens) | {w[0] for w in self.bad_words_ids if len(w) == 1}
        if self.eos_token_ids:  # a lone EOS in bad_words_ids is ignored (processors._bad_words)
            forbidden = set(self.suppress_tokens) | (forbidden - set(self.eos_token_ids))
        elif self.bad_words_ids:  # the manifest's EOS, unknown here, may be exempt: suppress_tokens only
            forbidden = set(self.suppress_tokens)
        if len(forbidden) >= vocab_size:
            raise ConfigError(
                f"suppress_tokens and bad_words_ids forbid all {vocab_size} tokens of the vocabulary, "
                "so nothing could be generated; forbid fewer tokens"
            )


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    if _is_int(values.get("forced_eos_token_id")):
        values = {**values, "forced_eos_token_id": (values["forced_eos_token_id"],)}  # transformers: int or list
    for name in _ID_TUPLES:
        if isinstance(values.get(name), (list, tuple)):
            out[name] = tuple(values[name])
    stop = values.get("stop")
    if isinstance(stop, str):
        out["stop"] = (stop,)
    elif isinstance(stop, (list, tuple)):
        out["stop"] = tuple(stop)
    words = values.get("bad_words_ids")
    if isinstance(words, (list, tuple)) and all(isinstance(w, (list, tuple)) for w in words):
        out["bad_words_ids"] = tuple(tuple(w) for w in words)
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool): inf and NaN make every comparison and score meaningless."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from undecodable bytes)
        return False
    return True


def _ids(values: Any) -> bool:
    return isinstance(values, tuple) and all(_is_int(i) and i >= 0 for i in values)


def _problems(c: GenerationConfig) -> list[str]:
    checks = [
        (_is_int(c.max_new_tokens) and c.max_new_tokens >= 1, "max_new_tokens must be an integer >= 1"),
        (_is_int(c.min_new_tokens) and 0 <= c.min_new_tokens, "min_new_tokens must be an integer >= 0"),
        (_is_int(c.num_beams) and c.num_beams >= 1, "num_beams must be an integer >= 1"),
        (_is_int(c.num_return_sequences) and c.num_return_sequences >= 1, "num_return_sequences must be >= 1"),
        (_is_number(c.temperature) and c.temperature > 0, "temperature must be > 0 and finite"),
        (_is_int(c.top_k) and c.top_k >= 0, "top_k must be an integer >= 0 (0 disables)"),
        (_is_number(c.top_p) and 0 < c.top_p <= 1, "top_p must be in (0, 1]"),
        (_is_number(c.min_p) and 0 <= c.min_p < 1, "min_p must be in [0, 1)"),
        (_is_number(c.length_penalty), "length_penalty must be a number (finite)"),
        (_is_number(c.repetition_penalty) and c.repetition_penalty > 0, "repetition_penalty must be > 0 and finite"),
        (_is_int(c.no_repeat_ngram_size) and c.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0"),
        (
            isinstance(c.early_stopping, bool) or c.early_stopping == "never",
            f"early_stopping must be one of {EARLY_STOPPING}",
        ),
        (_is_int(c.batch_size) and c.batch_size >= 0, "batch_size must be an integer >= 0 (0: one batch)"),
        (_is_int(c.max_memory_bytes) and c.max_memory_bytes >= 1, "max_memory_bytes must be an integer >= 1"),
        (_ids(c.eos_token_ids), "eos_token_ids must be non-negative integers"),
        (_ids(c.suppress_tokens), "suppress_tokens must be non-negative integers"),
        (_ids(c.prefix_ids), "prefix_ids must be non-negative integers"),
        (_ids(c.forced_eos_token_id), "forced_eos_token_id must be non-negative integers"),
        (
            isinstance(c.stop, tuple) and all(isinstance(s, str) and s and _unicode(s) for s in c.stop),
            "stop strings must be non-empty strings of valid Unicode",
        ),
        (
            isinstance(c.bad_words_ids, tuple) and all(_ids(w) and w for w in c.bad_words_ids),
            "bad_words_ids must be non-empty lists of non-negative integers",
        ),
        (
            c.forced_bos_token_id is None or (_is_int(c.forced_bos_token_id) and c.forced_bos_token_id >= 0),
            "forced_bos_token_id must be a non-negative integer or None",
        ),
        (c.seed is None or (_is_int(c.seed) and c.seed >= 0), "seed must be a non-negative integer or None"),
        (isinstance(c.do_sample, bool), "do_sample must be True or False"),
        (isinstance(c.truncate, bool), "truncate must be True or False"),
    ]
    problems = [f"{message}, got {_value_of(message, c)!r}" for ok, message in checks if not ok]
    return problems or _combination_problems(c)  # combinations only make sense for valid values


def _combination_problems(c: GenerationConfig) -> list[str]:
    problems = []
    if c.num_beams > 1 and c.num_return_sequences > c.num_beams:
        problems.append(f"num_return_sequences ({c.num_return_sequences}) cannot exceed num_beams ({c.num_beams})")
    if c.num_beams == 1 and not c.do_sample and c.num_return_sequences > 1:
        problems.append("num_return_sequences > 1 needs num_beams > 1 or do_sample=True")
    if c.num_beams > 1 and c.do_sample:
        problems.append(
            "do_sample=True with num_beams > 1 (beam sampling) is not supported: "
            "use num_beams=1 to sample or do_sample=False for beam search"
        )
    if c.min_new_tokens > c.max_new_tokens:
        problems.append(f"min_new_tokens ({c.min_new_tokens}) exceeds max_new_tokens ({c.max_new_tokens})")
    return problems


def _value_of(message: str, c: GenerationConfig) -> Any:
    return getattr(c, message.split()[0], None)
