"""Tokenizer files an artifact carries (chat template, special tokens) and GGUF source detection."""

from __future__ import annotations

import json

import pytest

from seqport.engine.errors import ArtifactError

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _folder(tmp_path, config: dict, jinja: str | None = None):
    from tiny import tiny_tokenizer

    tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja is not None:
        (tmp_path / "chat_template.jinja").write_text(jinja)
    return tmp_path


def test_chat_template_and_special_tokens_from_tokenizer_config(tmp_path):
    from seqport.export.tokenizer_files import write_tokenizer_files

    config = {"chat_template": TEMPLATE, "eos_token": {"content": "</s>", "special": True}, "bos_token": "<s>"}
    (tmp_path / "src").mkdir()
    source = _folder(tmp_path / "src", config)
    out = tmp_path / "out"
    out.mkdir()
    spec = write_tokenizer_files(source / "tokenizer.json", out)
    assert spec.chat_template == "chat_template.jinja" and (out / "chat_template.jinja").read_text() == TEMPLATE
    assert spec.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()


def test_chat_template_jinja_wins_and_named_templates_use_default(tmp_path):
    from seqport.export.tokenizer_files import chat_template

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert chat_template(_folder(tmp_path / "a", {"chat_template": "old"}, jinja=TEMPLATE)) == TEMPLATE
    named = [{"name": "tool_use", "template": "t"}, {"name": "default", "template": TEMPLATE}]
    assert chat_template(_folder(tmp_path / "b", {"chat_template": named})) == TEMPLATE


def test_no_template_is_null(tmp_path):
    from seqport.export.tokenizer_files import write_tokenizer_files

    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    spec = write_tokenizer_files(_folder(tmp_path / "src", {}) / "tokenizer.json", tmp_path / "out")
    assert spec.chat_template is None and not (tmp_path / "out" / "chat_template.jinja").exists()


def test_gguf_folder_detection(tmp_path):
    from seqport.export.gguf import gguf_file

    assert gguf_file(tmp_path) is None
    (tmp_path / "a.gguf").write_bytes(b"")
    assert gguf_file(tmp_path) == "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"several GGUF files \(a\.gguf, b\.gguf\): pass the one to export"):
        gguf_file(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert gguf_file(tmp_path) is None  # a HuggingFace folder that also holds GGUF files
