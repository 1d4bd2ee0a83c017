"""The Starlette app: OpenAI-shaped endpoints over one loaded seqport model.

from seqport.serving import build_app, ServeOptions
app = build_app(seqport.engine.load("artifacts/translator"), ServeOptions())
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from seqport.engine.errors import InputError, SeqportError
from seqport.engine.inputs import check_ids
from seqport.engine.runtime import RuntimeOptions
from seqport.serving.completions import Call, answer
from seqport.serving.embeddings import embeddings_body
from seqport.serving.metrics import ServerMetrics
from seqport.serving.protocol import (
    APIError,
    bad_request,
    check_fields,
    generation_config,
    include_usage,
    prompt_inputs,
)
from seqport.serving.scheduler import SchedulerLimits
from seqport.serving.scheduler_choice import make_scheduler

logger = logging.getLogger(__name__)
TASKS = {
    "encoder-decoder": ["translation", "completion"],
    "decoder-only": ["completion"],
    "encoder-only": ["embedding"],
}


@dataclass(frozen=True)
class ServeOptions:
    """Server settings.

    Args:
        model_name: the name clients pass as `model` (default: the artifact folder's name).
        max_batch_rows: most decoder rows decoded together (n, best_of, beams count per request).
        max_queue: most requests waiting; more are refused with 429 and Retry-After.
        batch_wait_ms: how long a request waits for others to share its batch.
        kv_budget_mb: worst-case KV cache of one batch, in MiB (0: no limit).
        shutdown_grace_s: on shutdown, running requests get this long to finish, then are cancelled.
        scheduler: "continuous" (iteration-level batching where the artifact supports it, else
            micro-batching, logged) or "micro" (static micro-batching).
        prefill_lane: continuous batching: "first-token" (a thread beside the worker prefills new
            requests and streams their first tokens while the running batch steps), "encode" (it
            prefills; an encoder-decoder row's first token comes from the worker's next step) or
            "off" (the worker admits between two steps). The engine process has no lane.
        step_priority: continuous batching: "normal", or "idle" (the running batch's long
            decoder calls run at SCHED_IDLE so that new requests' prefills and the HTTP side go
            first: earlier first tokens under load, fewer requests/s; serving/step_priority.py).
            Linux and the CPU provider; the engine process's calls stay normal.
        engine_process: run the scheduler and the model in a child process (serving/process.py)
            instead of a worker thread of this one.
        runtime: the engine process's runtime options (None: the server's defaults); a worker
            thread uses the model as loaded.
    """

    model_name: str | None = None
    max_batch_rows: int = 8
    max_queue: int = 64
    batch_wait_ms: float = 5.0
    kv_budget_mb: float = 0.0
    shutdown_grace_s: float = 5.0
    scheduler: str = "continuous"
    prefill_lane: str = "first-token"
    step_priority: str = "normal"
    engine_process: bool = False
    runtime: RuntimeOptions | None = None


class _State:
    def __init__(self, model: Any, options: ServeOptions) -> None:
        self.model, self.options = model, options
        self.name = options.model_name or model.folder.name
        self.architecture = model.manifest.architecture
        self.scheduler = None
        if self.architecture != "encoder-only":
            limits = SchedulerLimits(
                options.max_batch_rows,
                options.max_queue,
                options.batch_wait_ms / 1000,
                int(options.kv_budget_mb * 2**20),
            )
            callbacks = {
                "on_batch": lambda rows: self.metrics.batch_rows.observe(rows),
                "on_admit": lambda count: self.metrics.admitted_mid_batch.inc(count),
            }
            if options.engine_process:
                from seqport.serving.process import ProcessScheduler

                self.scheduler = ProcessScheduler(model, limits, options.scheduler, options.runtime, **callbacks)
            else:
                worker = {
                    "lane": options.prefill_lane,
                    "on_lane": lambda count: self.metrics.lane_started.inc(count),
                    "step_priority": options.step_priority,
                    "on_step_missed": lambda: self.metrics.idle_step_missed.inc(),
                }
                self.scheduler = make_scheduler(model, limits, options.scheduler, **callbacks, **worker)
        scheduler = self.scheduler
        self.metrics = ServerMetrics(
            lambda: scheduler.queue_depth if scheduler else 0, lambda: scheduler.running_rows if scheduler else 0
        )
        self.closing = False


def build_app(model: Any, options: ServeOptions | None = None) -> Starlette:
    """An ASGI app serving `model` (a loaded seqport model of any architecture).

    Args:
        model: from seqport.engine.load().
        options: server settings; defaults when None.

    Returns:
        The Starlette app; its lifespan stops the scheduler on shutdown.
    """
    state = _State(model, options or ServeOptions())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        state.closing = True
        if state.scheduler is not None:
            await run_in_threadpool(state.scheduler.close, state.options.shutdown_grace_s)

    routes = [
        Route("/", _page("index.html", "text/html"), methods=["GET"]),
        Route("/playground.js", _page("playground.js", "text/javascript"), methods=["GET"]),
        Route("/health", _endpoint(state, _health), methods=["GET"]),
        Route("/metrics", _endpoint(state, _metrics), methods=["GET"]),
        Route("/v1/models", _endpoint(state, _models), methods=["GET"]),
        Route("/v1/completions", _endpoint(state, _completions), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint(state, _chat), methods=["POST"]),
        Route("/v1/translations", _endpoint(state, _translations), methods=["POST"]),
        Route("/v1/embeddings", _endpoint(state, _embeddings), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.seqport = state
    return app


def _endpoint(state: _State, handler):
    async def endpoint(request: Request) -> Response:
        status = 200
        try:
            response = await handler(state, request)
            status = response.status_code
            return response
        except APIError as exc:
            status = exc.status
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except SeqportError as exc:  # an engine error a request caused (InputError, ConfigError, ...)
            status = 400
            return JSONResponse(bad_request(str(exc)).body(), status_code=400)
        finally:
            if status == 429 or status == 503:
                state.metrics.rejected.inc()
            state.metrics.requests.labels(request.scope["path"], str(status)).inc()  # no URL object

    return endpoint


def _page(name: str, media_type: str):
    async def page(request: Request) -> Response:
        text = (resources.files("seqport.serving") / "playground" / name).read_text(encoding="utf-8")
        return HTMLResponse(text, media_type=media_type)

    return page


async def _health(state: _State, request: Request) -> Response:
    if state.closing:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    return JSONResponse({"status": "ok", "model": state.name})


async def _metrics(state: _State, request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _models(state: _State, request: Request) -> Response:
    card = {
        "id": state.name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "seqport",
        "seqport": {"architecture": state.architecture, "tasks": _tasks(state)},
    }
    return JSONResponse({"object": "list", "data": [card]})


def _tasks(state: _State) -> list[str]:
    tasks = list(TASKS.get(state.architecture, []))
    if _has_chat_template(state.model):
        tasks.insert(0, "chat")
    return tasks


async def _body(state: _State, request: Request, endpoint: str) -> dict[str, Any]:
    try:
        body = check_fields(json.loads(await request.body()), endpoint)
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    name = body.get("model")
    if name is not None and name != state.name:
        raise APIError(
            404,
            f"model {name!r} does not exist; this server serves {state.name!r}",
            param="model",
            code="model_not_found",
        )
    return body


def _needs(state: _State, task: str, endpoint: str) -> None:
    if task not in _tasks(state):
        served = ", ".join(_tasks(state)) or "nothing"
        raise bad_request(
            f"{endpoint} needs an artifact that supports {task}; this {state.architecture} artifact supports: {served}"
        )


async def _generation(state: _State, body: dict[str, Any], kind: str, inputs: Any, param: str) -> Response:
    model = state.model
    config = generation_config(body, model.default_config)
    m = model.manifest
    try:
        ids = model.input_ids(inputs)
        ids = check_ids(ids, m.vocab_size, m.max_positions, config.truncate, tuple(m.special_ids.eos))
    except InputError as exc:
        raise bad_request(str(exc), param) from None
    call = Call(kind, state.name, ids, config, bool(body.get("stream")), include_usage(body))
    return await answer(call, state.scheduler, state.metrics)


async def _completions(state: _State, request: Request) -> Response:
    body = await _body(state, request, "completions")
    _needs(state, "completion", "/v1/completions")
    return await _generation(state, body, "completions", prompt_inputs(body.get("prompt"), "prompt"), "prompt")


async def _translations(state: _State, request: Request) -> Response:
    body = await _body(state, request, "translations")
    _needs(state, "translation", "/v1/translations")
    return await _generation(state, body, "translations", prompt_inputs(body.get("input"), "input"), "input")


async def _chat(state: _State, request: Request) -> Response:
    body = await _body(state, request, "chat")
    if not _has_chat_template(state.model):
        raise bad_request(
            f"this {state.architecture} artifact has no chat template: /v1/chat/completions needs a decoder-only "
            "artifact exported from a checkpoint with one (docs/chat.md); "
            "use /v1/completions with a plain prompt",
            code="no_chat_template",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(_is_message(m) for m in messages):
        raise bad_request(
            "messages must be a non-empty list of {role, content} objects with string content", "messages"
        )
    try:
        prompt = state.model.apply_chat_template(messages)
    except InputError as exc:
        raise bad_request(str(exc), "messages") from None
    return await _generation(state, body, "chat", [prompt] if isinstance(prompt, str) else [list(prompt)], "messages")


def _has_chat_template(model: Any) -> bool:
    """A model that renders conversations: a decoder-only model whose artifact carries a template
    (or one set on it), or any object with apply_chat_template and no `chat_template` attribute."""
    return hasattr(model, "apply_chat_template") and getattr(model, "chat_template", "") is not None


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)
    )


async def _embeddings(state: _State, request: Request) -> Response:
    body = await _body(state, request, "embeddings")
    _needs(state, "embedding", "/v1/embeddings")
    return JSONResponse(await embeddings_body(state.model, state.name, body))
