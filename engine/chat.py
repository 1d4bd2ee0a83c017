"""Chat templates: a conversation → the prompt text an instruct model was trained on.

The artifact carries the checkpoint's jinja template (`tokenizer.chat_template`, a file beside
tokenizer.json) and the text of its special tokens (`tokenizer.special_tokens`). It is rendered
the way transformers' `apply_chat_template` does (transformers/utils/chat_template_utils.py):
an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols
extension, a `tojson` filter, `raise_exception` and `strftime_now`, and the variables
`messages`, `add_generation_prompt` and bos_token, eos_token, ... The rendered text already
holds its special tokens, so it is tokenized without adding them again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from seqport.engine.artifact_files import artifact_file
from seqport.engine.errors import ArtifactError, ConfigError, InputError

Message = Mapping[str, Any]
NO_TEMPLATE = (
    "this artifact has no chat template: re-export it from a checkpoint that has one (tokenizer_config.json's "
    "`chat_template` or chat_template.jinja), or pass a jinja template string as chat_template="
)


def read_chat_template(folder: str | Path, file: str | None) -> str | None:
    """The template text the manifest's `tokenizer.chat_template` names, or None without one.

    Raises:
        ArtifactError: the file is missing, not UTF-8, or lies outside the artifact folder.
    """
    if file is None:
        return None
    path = artifact_file(folder, file, "$.tokenizer.chat_template")
    if not path.is_file():
        raise ArtifactError(f"chat template missing: {path} (named by $.tokenizer.chat_template). Re-export the model.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path} is not UTF-8 text ({exc}); re-export the model") from None


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    special_tokens: Mapping[str, str],
    add_generation_prompt: bool = True,
) -> str:
    """Render a conversation with a jinja chat template, as transformers' apply_chat_template.

    Args:
        template: the jinja source; None raises ConfigError (the artifact has none).
        messages: [{"role": "system"|"user"|"assistant", "content": str}, ...].
        special_tokens: bos_token, eos_token, ... → their text (the manifest's).
        add_generation_prompt: end with the header that starts the assistant's turn.

    Returns:
        The prompt text, special tokens written out.

    Raises:
        ConfigError: no template, or a template that is not valid jinja.
        InputError: messages that are not {role, content} objects, or a template that refuses
            them (its raise_exception, e.g. roles that do not alternate).
    """
    if template is None:
        raise ConfigError(NO_TEMPLATE)
    _check_messages(messages)
    import jinja2

    try:
        compiled = _compile(template)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"the chat template is not valid jinja: {exc}") from None
    try:
        return compiled.render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **special_tokens
        )
    except jinja2.TemplateError as exc:
        raise InputError(f"the chat template refused these messages: {exc}") from None


def _check_messages(messages: Sequence[Message]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InputError(f"message {index} must be a dict with a string 'role' and 'content', got {message!r}")


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    """The environment transformers builds in _compile_jinja_template (less its generation tracker)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)
