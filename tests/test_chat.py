"""Chat: the artifact's template renders as transformers' apply_chat_template, and chat() generates
as transformers' generate on those ids (a tiny seeded Llama with ChatML specials)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_causal import CASES, CORPUS, VOCAB, _widen  # noqa: E402

from seqport.engine.errors import ArtifactError, ConfigError, InputError  # noqa: E402

#: SmolLM2-135M-Instruct's template, verbatim (tokenizer_config.json)
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: bos/eos text, raise_exception, and indented block tags that only trim_blocks + lstrip_blocks keep tidy
LLAMA_LIKE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('roles are system, user and assistant') }}
    {% endif %}
    {% if message['role'] == 'system' %}
<<SYS>> {{ message['content'] }} <</SYS>>
    {% else %}
[{{ message['role'] }}] {{ message['content'] | trim }}{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}

    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[assistant]
{% endif %}"""
TEMPLATES = {"smollm2": SMOLLM2, "llama-like": LLAMA_LIKE}
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "where is the small red house"}],
    "multi-turn": [
        {"role": "user", "content": "the cat sat on"},
        {"role": "assistant", "content": "the mat"},
        {"role": "user", "content": "a dog ran in the park"},
    ],
    "system": [
        {"role": "system", "content": "one two three"},
        {"role": "user", "content": "numbers"},
    ],
}


def _chat_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5 + ["system user assistant You are a helpful AI"] * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def _checkpoint(folder, template: str):
    row = CASES["llama"]
    options = {**row.config, "eos_token_id": 4, "max_position_embeddings": 160}  # <|im_end|> ends a turn
    config = getattr(transformers, row.config_class)(vocab_size=VOCAB, **options)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    _widen(model, seed=11)
    model.save_pretrained(folder)
    _chat_tokenizer().save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def chat_pair(request, tmp_path_factory):
    """(HF tokenizer, HF model, engine model) for one template, exported once."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp(f"chat-{request.param}")
    checkpoint = _checkpoint(root / "checkpoint", TEMPLATES[request.param])
    export_model(checkpoint, root / "artifact", progress=False)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return hf_tokenizer, hf, sp.load(root / "artifact")


def _hf_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def test_artifact_carries_the_template_and_special_tokens(chat_pair):
    _, _, engine = chat_pair
    spec = engine.manifest.tokenizer
    assert spec.chat_template == "chat_template.jinja"
    assert (engine.folder / "chat_template.jinja").read_text() == engine.chat_template
    assert spec.special_tokens == {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"}


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_prompt_ids_equal_transformers_apply_chat_template(chat_pair, conversation):
    tokenizer, _, engine = chat_pair
    messages = CONVERSATIONS[conversation]
    ids = engine.apply_chat_template(messages)
    assert ids == _hf_ids(tokenizer, messages)
    assert ids[0] == (1 if "bos_token" in engine.chat_template else 3)  # specials are single ids, not spelled out
    assert ids[:2] != [1, 1], "BOS added twice: the rendered text already holds it"


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_chat_greedy_equals_transformers_generate(chat_pair, conversation):
    tokenizer, hf, engine = chat_pair
    messages = CONVERSATIONS[conversation]
    prompt = _hf_ids(tokenizer, messages)
    with torch.inference_mode():
        out = hf.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, num_beams=1, pad_token_id=4, eos_token_id=[4]
        )
    expected = out[0, len(prompt) :].tolist()
    result = engine.chat(messages, max_new_tokens=8)
    assert result.ids == expected and len(expected) > 1
    assert "".join(piece.text for piece in engine.stream_chat(messages, max_new_tokens=8)) == result.text


def test_template_argument_and_errors(chat_pair, tmp_path):
    _, _, engine = chat_pair
    plain = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    assert engine.apply_chat_template([{"role": "user", "content": "numbers"}], chat_template=plain) == (
        engine.tokenizer.encode_plain("numbers ")
    )
    with pytest.raises(ConfigError, match="not valid jinja"):
        engine.apply_chat_template([{"role": "user", "content": "a"}], chat_template="{% for %}")
    with pytest.raises(InputError, match="non-empty list"):
        engine.chat([])
    with pytest.raises(InputError, match="string 'role'"):
        engine.chat(["hello"])
    if "raise_exception" in engine.chat_template:
        with pytest.raises(InputError, match="refused these messages: roles are system, user and assistant"):
            engine.chat([{"role": "tool", "content": "x"}])
    saved = engine.chat_template
    engine.chat_template = None
    try:
        with pytest.raises(ConfigError, match=r"no chat template: re-export .* chat_template="):
            engine.chat([{"role": "user", "content": "a"}])
    finally:
        engine.chat_template = saved


def test_template_outside_the_artifact_is_refused(chat_pair, tmp_path):
    import shutil

    import seqport.engine as sp

    _, _, engine = chat_pair
    copy = tmp_path / "artifact"
    shutil.copytree(engine.folder, copy)
    data = json.loads((copy / "seqport.json").read_text())
    data["tokenizer"]["chat_template"] = "../evil.jinja"
    (copy / "seqport.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"\$\.tokenizer\.chat_template: '\.\./evil\.jinja' points outside"):
        sp.load(copy)
    data["tokenizer"]["chat_template"] = "missing.jinja"
    (copy / "seqport.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="chat template missing"):
        sp.load(copy)


def _cli(*args: str, stdin: str = "") -> str:
    import subprocess
    import sys

    command = [sys.executable, "-m", "seqport.cli", *args]
    done = subprocess.run(command, input=stdin.encode(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_chat_repl_streams_answers_with_history(chat_pair):
    _, _, engine = chat_pair
    first, second = "where is the small red house", "a dog ran in the park"
    system = [{"role": "system", "content": "one two three"}]
    history = system + [{"role": "user", "content": first}]
    answer = engine.chat(history, max_new_tokens=6).text
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": second}]
    expected = [answer, engine.chat(history, max_new_tokens=6).text]
    after_reset = engine.chat(system + [{"role": "user", "content": second}], max_new_tokens=6).text
    flags = ["--max-new-tokens", "6", "--system", "one two three"]
    out = _cli("chat", str(engine.folder), *flags, stdin=f"{first}\n{second}\n/reset\n{second}\n/exit\nnever read\n")
    assert out == "".join(f"{text}\n" for text in expected + [after_reset])
    assert len(set(expected + [after_reset])) > 1, "the history must change the answer on this tiny model"


def test_generate_chat_renders_one_user_turn(chat_pair):
    _, _, engine = chat_pair
    expected = engine.chat([{"role": "user", "content": "numbers"}], max_new_tokens=6)
    out = _cli("generate", str(engine.folder), "--chat", "numbers", "--max-new-tokens", "6", "--json")
    assert json.loads(out)["ids"] == expected.ids


def test_info_shows_the_template(chat_pair):
    _, _, engine = chat_pair
    out = _cli("info", str(engine.folder))
    assert "chat template: chat_template.jinja · special tokens: bos_token '<s>', eos_token '<|im_end|>'" in out
