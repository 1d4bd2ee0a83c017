"""`seqport serve` on the tiny encoder-decoder artifact: the official openai client for the
happy paths, plain httpx for errors, equality with model.generate() under concurrency,
disconnects and backpressure. Servers listen on 127.0.0.1 only, on a free port."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

from live_server import LiveServer, SlowModel  # noqa: E402
from tiny import SENTENCES  # noqa: E402

from seqport.serving import ServeOptions, build_app  # noqa: E402

NAME = "tiny"


@pytest.fixture(scope="module")
def server(model):
    options = ServeOptions(model_name=NAME, max_batch_rows=6, batch_wait_ms=15)
    with LiveServer(build_app(model, options)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)


def sse_lines(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


# -- the openai client ---------------------------------------------------------------------


def test_completion_equals_generate(client, model):
    expected = model.generate([SENTENCES[0]], max_new_tokens=9)[0]
    answer = client.completions.create(model=NAME, prompt=SENTENCES[0], max_tokens=9, temperature=0)
    assert answer.choices[0].text == expected.text
    assert answer.choices[0].finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    assert answer.usage.prompt_tokens == len(model.input_ids([SENTENCES[0]])[0])
    assert answer.usage.completion_tokens == len(expected.ids)


def test_streamed_completion_joins_to_generate_text(client, model):
    expected = model.generate([SENTENCES[1]], max_new_tokens=12)[0]
    chunks = list(
        client.completions.create(
            model=NAME,
            prompt=SENTENCES[1],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == expected.text
    assert len(texts) > 1, "the answer came in one piece: not streamed"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] in ("stop", "length") and not any(reasons[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.ids)


def test_stream_ends_with_exactly_one_done(server):
    body = {"model": NAME, "prompt": SENTENCES[2], "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = sse_lines(response)
    assert lines[-1] == "[DONE]" and lines.count("[DONE]") == 1
    assert all(json.loads(line)["object"] == "text_completion" for line in lines[:-1])


def test_several_prompts_and_the_translation_endpoint(client, server, model):
    expected = [r.text for r in model.generate(SENTENCES[:3], max_new_tokens=7)]
    answer = client.completions.create(model=NAME, prompt=SENTENCES[:3], max_tokens=7, temperature=0)
    assert [c.text for c in sorted(answer.choices, key=lambda c: c.index)] == expected
    body = {"model": NAME, "input": SENTENCES[:3], "max_tokens": 7, "temperature": 0}
    translated = httpx.post(f"{server.url}/v1/translations", json=body, timeout=30).json()
    assert translated["object"] == "translation"
    assert [c["text"] for c in translated["choices"]] == expected


def test_beam_search_returns_n_choices_like_generate(client, model):
    expected = model.generate([SENTENCES[4]], max_new_tokens=8, num_beams=3, num_return_sequences=2)[0]
    answer = client.completions.create(model=NAME, prompt=SENTENCES[4], max_tokens=8, temperature=0, n=2, best_of=3)
    assert [c.text for c in answer.choices] == [s.text for s in expected.sequences]


def test_models_health_and_metrics(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert card["seqport"] == {"architecture": "encoder-decoder", "tasks": ["translation", "completion"]}
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        "seqport_queue_depth",
        "seqport_running_rows",
        "seqport_batch_rows_bucket",
        "seqport_time_to_first_token_seconds_bucket",
        "seqport_inter_token_seconds_bucket",
        "seqport_request_seconds_bucket",
        "seqport_generated_tokens_total",
        "seqport_rejected_requests_total",
        "seqport_cancelled_requests_total",
        "seqport_idle_step_deadline_misses_total",
    ):
        assert name in metrics, name


# -- equality under concurrency -------------------------------------------------------------


def _case(i: int) -> dict:
    """Request i of the staggered set: greedy with mixed max_tokens, or seeded sampling."""
    case = {"prompt": SENTENCES[i % len(SENTENCES)], "max_tokens": 3 + (i * 7) % 28}
    if i % 3 == 2:
        case.update(temperature=0.9, top_p=0.95, seed=100 + i)
    else:
        case.update(temperature=0)
    return case


def _alone(model, case: dict):
    options = {"max_new_tokens": case["max_tokens"]}
    if case["temperature"] > 0:
        options.update(do_sample=True, temperature=case["temperature"], top_p=case["top_p"], seed=case["seed"])
    return model.generate([case["prompt"]], **options)[0]


def test_concurrent_staggered_requests_equal_generate_alone(client, server, model):
    cases = [_case(i) for i in range(18)]
    before = _histogram(server, "seqport_batch_rows")

    def ask(i: int):
        time.sleep(0.004 * (i % 6))  # staggered arrivals: some share a batch, some come mid-batch
        stream = i % 2 == 0
        answer = client.completions.create(model=NAME, stream=stream, **cases[i])
        if stream:
            return "".join(c.choices[0].text for c in answer if c.choices)
        return answer.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(ask, range(len(cases))))
    for i, (case, text) in enumerate(zip(cases, texts)):
        assert text == _alone(model, case).text, f"request {i} {case}"
    count, total = (a - b for a, b in zip(_histogram(server, "seqport_batch_rows"), before))
    assert total > count, "no batch held more than one row: the test exercised no batching"


def _histogram(server, name: str) -> tuple[float, float]:
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    value = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith(name)}
    return value[f"{name}_count"], value[f"{name}_sum"]


# -- errors: OpenAI's body, never a 500 --------------------------------------------------------


@pytest.mark.parametrize(
    "body, param, match",
    [
        ({"prompt": "a", "temperature": 3}, "temperature", "temperature must be a number in"),
        ({"prompt": "a", "temperature": "hot"}, "temperature", "temperature must be"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens", "max_tokens must be an integer >= 1"),
        ({"prompt": "a", "top_p": 0}, "top_p", "top_p must be"),
        ({"prompt": "a", "seed": -1}, "seed", "seed must be an integer >= 0"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", "stop must be"),
        ({"prompt": "a", "frobnicate": 1}, "frobnicate", "unknown field"),
        ({"prompt": "a", "presence_penalty": 1.0}, "presence_penalty", "not supported"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "the cat " * 40}, "prompt", "more than the model's maximum"),
        ({"prompt": [[5, 9999]]}, "prompt", "outside the vocabulary"),
        ({"prompt": 5}, "prompt", "prompt must be"),
        ({"prompt": "a", "n": 9, "temperature": 0}, None, "more than the server's limit"),
        ({"prompt": "a", "n": 2, "best_of": 1}, "best_of", "best_of"),
        ({"prompt": "a", "min_tokens": 5, "max_tokens": 2}, None, "min_new_tokens"),
    ],
)
def test_bad_options_get_a_400_with_openais_error_body(server, body, param, match):
    response = httpx.post(f"{server.url}/v1/completions", json={"model": NAME, **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert match in error["message"]


def test_bad_stream_request_is_a_400_not_a_broken_stream(server):
    body = {"model": NAME, "prompt": "the cat " * 40, "stream": True}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400 and "maximum" in response.json()["error"]["message"]


def test_unknown_model_is_a_404_and_wrong_task_a_400(server):
    response = httpx.post(f"{server.url}/v1/completions", json={"model": "gpt-4", "prompt": "a"}, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found" and "'tiny'" in response.json()["error"]["message"]
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "no_chat_template"
    assert "no chat template" in response.json()["error"]["message"]
    response = httpx.post(f"{server.url}/v1/embeddings", json={"model": NAME, "input": "a"}, timeout=30)
    assert response.status_code == 400 and "supports: translation, completion" in response.json()["error"]["message"]
    response = httpx.post(f"{server.url}/v1/completions", content=b"{not json", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_full_queue_answers_429_with_retry_after(model):
    gate = threading.Event()
    options = ServeOptions(model_name=NAME, max_batch_rows=1, max_queue=1, batch_wait_ms=0)
    with LiveServer(build_app(SlowModel(model, gate=gate), options)) as live:
        body = {"model": NAME, "prompt": SENTENCES[0], "max_tokens": 4, "temperature": 0}
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, f"{live.url}/v1/completions", json=body, timeout=30)
            _wait_for(lambda: _gauge(live, "seqport_running_rows") == 1)
            second = pool.submit(httpx.post, f"{live.url}/v1/completions", json=body, timeout=30)
            _wait_for(lambda: _gauge(live, "seqport_queue_depth") == 1)
            refused = httpx.post(f"{live.url}/v1/completions", json=body, timeout=30)
            gate.set()
            assert [first.result().status_code, second.result().status_code] == [200, 200]
        assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and "queue is full" in error["message"]
        assert _gauge(live, "seqport_rejected_requests_total") == 1


def _gauge(live: LiveServer, name: str) -> float:
    for line in httpx.get(f"{live.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- disconnects ---------------------------------------------------------------------------------


def test_disconnects_free_rows_and_other_streams_end_with_one_done(model):
    slow = SlowModel(model, delay=0.01)
    options = ServeOptions(model_name=NAME, max_batch_rows=4, batch_wait_ms=10)
    with LiveServer(build_app(slow, options)) as live:
        cases = [{"prompt": SENTENCES[i % 8], "max_tokens": 30, "temperature": 0} for i in range(12)]

        def run(i: int):
            body = {"model": NAME, "stream": True, **cases[i]}
            with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=30) as response:
                if i % 3 == 0:  # a client that leaves after two pieces
                    lines = response.iter_lines()
                    [next(lines) for _ in range(3)]
                    return None
                return sse_lines(response)

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(run, range(12)))
        for i, lines in enumerate(results):
            if lines is not None:
                assert lines.count("[DONE]") == 1 and lines[-1] == "[DONE]"
                text = "".join(json.loads(line)["choices"][0]["text"] for line in lines[:-1])
                assert text == model.generate([cases[i]["prompt"]], max_new_tokens=30)[0].text
        _wait_for(lambda: _gauge(live, "seqport_running_rows") == 0, timeout=1.0)
        assert _gauge(live, "seqport_cancelled_requests_total") == 4


def test_a_lone_disconnected_stream_stops_decoding(model):
    slow = SlowModel(model, delay=0.02)
    with LiveServer(build_app(slow, ServeOptions(model_name=NAME))) as live:
        body = {"model": NAME, "prompt": SENTENCES[3], "max_tokens": 35, "temperature": 0, "min_tokens": 35}
        with httpx.stream("POST", f"{live.url}/v1/completions", json={**body, "stream": True}, timeout=30) as r:
            lines = r.iter_lines()
            [next(lines) for _ in range(3)]
        _wait_for(lambda: _gauge(live, "seqport_running_rows") == 0, timeout=1.0)
        time.sleep(0.2)
        steps = slow.steps
        time.sleep(0.2)
        assert slow.steps == steps < 20, "the worker kept decoding a request nobody reads"


# -- without torch, and without an artifact --------------------------------------------------------


def test_server_answers_without_importing_torch(tiny_artifact):
    code = textwrap.dedent(f"""
        import asyncio, sys
        import httpx
        import seqport.engine as sp
        from seqport.serving import build_app
        app = build_app(sp.load({str(tiny_artifact)!r}))
        async def main():
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                    r = await c.post("/v1/completions", json={{"prompt": "the cat", "max_tokens": 3}})
                    assert r.status_code == 200, r.text
        asyncio.run(main())
        banned = [m for m in ("torch", "transformers", "optimum", "seqport.export") if m in sys.modules]
        assert not banned, banned
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")


def test_no_artifact_without_torch_says_to_pass_one(monkeypatch):
    import seqport.serving.server as server_module
    from seqport.engine.errors import ArtifactError

    def missing(name):
        error = ImportError(f"No module named {name!r}")
        error.name = "torch"
        raise error

    monkeypatch.setattr(server_module.importlib, "import_module", missing)
    with pytest.raises(ArtifactError, match=r"pass an artifact folder \(seqport serve ARTIFACT\)"):
        server_module.bundled_translator()
