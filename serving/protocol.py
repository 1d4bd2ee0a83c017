"""OpenAI request bodies → checked inputs and a GenerationConfig; OpenAI's error body.

Options keep OpenAI's meanings: `temperature: 0` is greedy search, `max_tokens` counts
generated tokens, `stop` ends the text before the stop string, `n` returns several choices.
An option left out takes the artifact's default (its manifest `generation` section), not
OpenAI's. docs/serving.md has the full table.
"""

from __future__ import annotations

import functools
from typing import Any

from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError

_COMMON = {
    "model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "best_of", "stream", "stream_options",
    "user", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    # seqport extensions (GenerationConfig options OpenAI has no name for)
    "top_k", "min_p", "repetition_penalty", "min_tokens", "num_beams", "length_penalty", "no_repeat_ngram_size",
}  # fmt: skip
FIELDS = {
    "completions": _COMMON | {"prompt", "echo", "suffix"},
    "chat": _COMMON | {"messages", "max_completion_tokens", "top_logprobs"},
    "translations": _COMMON | {"input"},
    "embeddings": {"model", "input", "encoding_format", "dimensions", "user"},
}
_EXTENSIONS = {
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "length_penalty": "length_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram_size",
}


class APIError(Exception):
    """An error answered with OpenAI's body {"error": {"message", "type", "param", "code"}}.

    Args:
        status: HTTP status.
        message: what was wrong and how to fix it.
        kind: OpenAI's error type ("invalid_request_error", ...).
        param: the request field at fault, if one is.
        code: a short machine-readable code.
        headers: extra response headers (Retry-After on 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def check_fields(body: Any, endpoint: str) -> dict[str, Any]:
    """The body as a dict; unknown fields are an error naming them and the known ones."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS[endpoint])
    if unknown:
        known = ", ".join(sorted(FIELDS[endpoint]))
        raise bad_request(f"unknown field(s) {unknown}; this endpoint takes: {known}", param=unknown[0])
    return body


def generation_config(body: dict[str, Any], defaults: GenerationConfig) -> GenerationConfig:
    """Map the OpenAI options of `body` onto `defaults`.

    Raises:
        APIError: 400 naming the option that is out of range or unsupported.
    """
    _reject_unsupported(body)
    overrides: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        overrides["max_new_tokens"] = _int(body, "max_tokens" if "max_tokens" in body else "max_completion_tokens", 1)
    temperature = body.get("temperature")
    if temperature is not None:
        if not _number(temperature) or not 0 <= temperature <= 2:
            raise bad_request(f"temperature must be a number in [0, 2] (0: greedy), got {temperature!r}", "temperature")
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        overrides.update(sampling)
    if body.get("top_p") is not None:
        if not _number(body["top_p"]) or not 0 < body["top_p"] <= 1:
            raise bad_request(f"top_p must be a number in (0, 1], got {body['top_p']!r}", "top_p")
        overrides["top_p"] = body["top_p"]
    if body.get("seed") is not None:
        overrides["seed"] = _int(body, "seed", 0)
    if body.get("stop") is not None:
        overrides["stop"] = _stop(body["stop"])
    for name, option in _EXTENSIONS.items():
        if body.get(name) is not None:
            overrides[option] = body[name]
    overrides.update(_choices(body, overrides.get("do_sample", defaults.do_sample)))
    key = tuple((name, type(v), v) for name, v in sorted(overrides.items()))
    try:
        hash(key)
    except TypeError:  # an unhashable option value (a list): not cached
        return _replace(defaults, key)
    return _configured(defaults, key)


def _replace(defaults: GenerationConfig, overrides: tuple[tuple[str, type, Any], ...]) -> GenerationConfig:
    """defaults.replace(overrides) for (name, type, value) triples; a refused option is a 400."""
    try:
        return defaults.replace(**{name: value for name, _, value in overrides})
    except (ConfigError, TypeError) as exc:
        raise bad_request(str(exc)) from None


#: `_replace`, cached: requests repeat the same few option sets, and building a GenerationConfig
#: validates every field. The type is in the key, so 5 and 5.0 (equal, same hash) are checked apart.
_configured = functools.lru_cache(maxsize=256)(_replace)


def prompt_inputs(value: Any, param: str) -> list[str] | list[list[int]]:
    """OpenAI's prompt/input forms: a text, texts, token ids, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_int(v) for v in value):
            return [value]
        if all(isinstance(v, list) and v and all(_is_int(i) for i in v) for v in value):
            return value
    raise bad_request(f"{param} must be a non-empty string, list of strings, or token id list(s)", param)


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad_request("stream_options takes only include_usage", "stream_options")
    return bool(options.get("include_usage"))


def _choices(body: dict[str, Any], sampling: bool) -> dict[str, Any]:
    """n, best_of and num_beams: n samples when sampling; otherwise beam search of width
    max(n, best_of, num_beams) returning the n best."""
    n = _int(body, "n", 1) if body.get("n") is not None else 1
    best_of = _int(body, "best_of", 1) if body.get("best_of") is not None else n
    beams = _int(body, "num_beams", 1) if body.get("num_beams") is not None else 1
    if best_of < n:
        raise bad_request(f"best_of ({best_of}) must be >= n ({n})", "best_of")
    if sampling:
        if best_of > n or beams > 1:
            raise bad_request("best_of > n and num_beams need greedy search (temperature: 0)", "best_of")
        return {"num_return_sequences": n} if n > 1 else {}
    width = max(n, best_of, beams)
    return {"num_beams": width, "num_return_sequences": n} if width > 1 else {}


def _reject_unsupported(body: dict[str, Any]) -> None:
    zero = {"presence_penalty": 0, "frequency_penalty": 0}
    for name, neutral in zero.items():
        if body.get(name) not in (None, neutral):
            raise bad_request(f"{name} is not supported; use repetition_penalty (> 1 discourages repeats)", name)
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported", "logit_bias")
    if body.get("logprobs") not in (None, False, 0):
        raise bad_request("logprobs are not supported yet", "logprobs")
    if body.get("echo"):
        raise bad_request("echo is not supported", "echo")
    if body.get("suffix"):
        raise bad_request("suffix is not supported", "suffix")


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad_request(f"stop must be a non-empty string or a list of 1 to 4 of them, got {value!r}", "stop")
    return tuple(stops)


def _int(body: dict[str, Any], name: str, low: int) -> int:
    value = body[name]
    if not _is_int(value) or value < low:
        raise bad_request(f"{name} must be an integer >= {low}, got {value!r}", name)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
