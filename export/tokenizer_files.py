"""The tokenizer files an artifact carries: tokenizer.json, the chat template, special tokens.

The engine reads tokenizer.json. An instruct model also needs its chat template (the
checkpoint's chat_template.jinja, or tokenizer_config.json's `chat_template`) and the text of
its special tokens (the template writes `{{ bos_token }}`, `{{ eos_token }}`): the template is
copied to `chat_template.jinja` beside tokenizer.json, and both are named in the manifest's
`tokenizer` section. Where a source has no tokenizer.json, one is rebuilt from a GGUF's metadata
or converted by the family's adapter from its slow-tokenizer files.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from seqport.engine.manifest import TokenizerSpec
from seqport.export import gguf

logger = logging.getLogger(__name__)
TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("%s is not valid JSON: its chat template and special tokens are not carried", path)
        return {}
    return data if isinstance(data, dict) else {}


def chat_template(folder: Path) -> str | None:
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's
    `chat_template` (a string, or a list of named templates of which "default" is used)."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    template = _json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def special_tokens(folder: Path) -> dict[str, str]:
    """bos_token, eos_token, ... → their text, from special_tokens_map.json and tokenizer_config.json."""
    found: dict[str, str] = {}
    for source in ("special_tokens_map.json", "tokenizer_config.json"):
        for name, value in _json(folder / source).items():
            text = value.get("content") if isinstance(value, dict) else value
            if name in SPECIAL_TOKENS and isinstance(text, str) and name not in found:
                found[name] = text
    return dict(sorted(found.items()))


def write_tokenizer_files(tokenizer: Path, out: Path) -> TokenizerSpec:
    """Copy `tokenizer` (a tokenizer.json) into `out` with the chat template beside it.

    The chat template and special tokens are read from the folder that holds `tokenizer`.

    Returns:
        The manifest's tokenizer section.
    """
    shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
    template = chat_template(tokenizer.parent)
    if template is not None:
        (out / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    return TokenizerSpec(
        file=TOKENIZER_FILE,
        chat_template=CHAT_TEMPLATE_FILE if template is not None else None,
        special_tokens=special_tokens(tokenizer.parent),
    )


def gguf_tokenizer(source: Path, staging: Path) -> Path | None:
    """The tokenizer.json rebuilt from a GGUF folder's metadata into `staging`, else None (the
    folder has its own tokenizer.json, or no GGUF)."""
    if not (source / TOKENIZER_FILE).is_file() and gguf.gguf_file(source) is not None:
        return staging / gguf.write_tokenizer_files(source, staging)
    return None


def source_tokenizer(adapter: Any, source: Path, staging: Path) -> Path:
    """source/tokenizer.json, else one the adapter converts from the folder's slow-tokenizer
    files (spiece.model, source.spm + vocab.json, ...) into `staging`: the engine reads only
    tokenizer.json."""
    if (source / TOKENIZER_FILE).is_file() or not hasattr(adapter, "write_tokenizer"):
        return source / TOKENIZER_FILE
    return staging / adapter.write_tokenizer(staging)
