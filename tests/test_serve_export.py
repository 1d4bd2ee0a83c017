"""`seqport serve` on a decoder-only (tiny GPT-2) and an encoder-only (tiny BERT) artifact,
exported in this session (needs torch and transformers)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.export
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

from live_server import LiveServer  # noqa: E402

import seqport.engine as sp  # noqa: E402
from seqport.serving import ServeOptions, build_app  # noqa: E402

PROMPTS = ["the small red house where the cat sat on", "a dog ran in the park", "numbers", "one two three four"]


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    from test_hf_causal import _write_checkpoint

    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("serve-gpt2")
    export_model(_write_checkpoint("gpt2", root / "checkpoint"), root / "artifact", progress=False)
    return sp.load(root / "artifact")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from test_hf_encoder import FE, Row, _write_folder

    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("serve-bert")
    _write_folder(Row("bert", FE, ("mean",), normalize=True), root / "checkpoint")
    export_model(root / "checkpoint", root / "artifact", progress=False)
    return sp.load(root / "artifact")


def _client(live: LiveServer):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0, timeout=60)


def test_decoder_only_staggered_requests_equal_generate_alone(causal):
    cases = []
    for i in range(12):
        case = {"prompt": PROMPTS[i % 4], "max_tokens": 2 + (i * 5) % 17}
        case.update({"temperature": 0.8, "seed": 7 + i} if i % 4 == 3 else {"temperature": 0})
        cases.append(case)
    options = ServeOptions(model_name="gpt2", max_batch_rows=4, batch_wait_ms=15)
    with LiveServer(build_app(causal, options)) as live:
        client = _client(live)

        def ask(i: int) -> str:
            time.sleep(0.004 * (i % 4))
            if i % 2:
                return client.completions.create(model="gpt2", **cases[i]).choices[0].text
            chunks = client.completions.create(model="gpt2", stream=True, **cases[i])
            return "".join(c.choices[0].text for c in chunks if c.choices)

        with ThreadPoolExecutor(6) as pool:
            texts = list(pool.map(ask, range(len(cases))))
        batches = httpx.get(f"{live.url}/metrics").text
    for i, (case, text) in enumerate(zip(cases, texts)):
        sampling = {"do_sample": True, "temperature": 0.8, "seed": case["seed"]} if case["temperature"] else {}
        expected = causal.generate([case["prompt"]], max_new_tokens=case["max_tokens"], **sampling)[0].text
        assert text == expected, f"request {i} {case}"
    count = _value(batches, "seqport_batch_rows_count")
    assert _value(batches, "seqport_batch_rows_sum") > count, "no batch held more than one row"


def _value(metrics: str, name: str) -> float:
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith(name + " "))


#: a toy template: the turns' contents joined, then a generation prompt
TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}the{% endif %}"


def test_chat_needs_a_template_and_uses_it(causal, monkeypatch):
    messages = [{"role": "user", "content": "a dog ran"}, {"role": "user", "content": "in the park"}]
    with LiveServer(build_app(causal, ServeOptions(model_name="gpt2"))) as live:
        response = httpx.post(f"{live.url}/v1/chat/completions", json={"model": "gpt2", "messages": messages})
        assert response.status_code == 400 and response.json()["error"]["code"] == "no_chat_template"
        models = httpx.get(f"{live.url}/v1/models").json()["data"][0]["seqport"]
        assert models == {"architecture": "decoder-only", "tasks": ["completion"]}
    monkeypatch.setattr(causal, "chat_template", TEMPLATE)  # as an artifact exported with one carries it
    expected = causal.chat(messages, max_new_tokens=8).text
    assert causal.apply_chat_template(messages) == causal.tokenizer.encode_plain("a dog ran in the park the")
    with LiveServer(build_app(causal, ServeOptions(model_name="gpt2"))) as live:
        client = _client(live)
        answer = client.chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0)
        assert answer.choices[0].message.content == expected and answer.choices[0].message.role == "assistant"
        chunks = list(
            client.chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0, stream=True)
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        models = httpx.get(f"{live.url}/v1/models").json()["data"][0]["seqport"]
        assert models == {"architecture": "decoder-only", "tasks": ["chat", "completion"]}
        bad = [{"role": "user", "content": "x"}]
        monkeypatch.setattr(causal, "chat_template", "{{ raise_exception('only pairs') }}")
        response = httpx.post(f"{live.url}/v1/chat/completions", json={"model": "gpt2", "messages": bad})
        assert response.status_code == 400 and "refused these messages: only pairs" in response.text


def test_embeddings_equal_embed(embedder):
    texts = ["the cat sat on the mat", "where is the small red house in the park", "numbers"]
    expected = embedder.embed(texts)
    with LiveServer(build_app(embedder, ServeOptions(model_name="bert"))) as live:
        answer = _client(live).embeddings.create(model="bert", input=texts)  # base64 on the wire
        got = np.array([d.embedding for d in answer.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        assert answer.usage.prompt_tokens == sum(map(len, embedder.input_ids(texts)))
        body = {"model": "bert", "input": texts[0], "encoding_format": "float"}
        floats = httpx.post(f"{live.url}/v1/embeddings", json=body).json()["data"][0]["embedding"]
        np.testing.assert_allclose(floats, expected[0], rtol=1e-6, atol=1e-7)
        response = httpx.post(f"{live.url}/v1/completions", json={"model": "bert", "prompt": "a"})
        assert response.status_code == 400 and "supports: embedding" in response.json()["error"]["message"]
        response = httpx.post(f"{live.url}/v1/embeddings", json={**body, "dimensions": 3})
        assert response.status_code == 400 and response.json()["error"]["param"] == "dimensions"
