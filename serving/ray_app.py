"""The server as a Ray Serve deployment: `seqport serve --ray`, or `serve run`.

    serve run seqport.serving.ray_app:app_builder artifact=/shared/artifacts/translator num_replicas=2

Each replica loads the artifact once and serves serving/app.py's Starlette app (the same
OpenAI-shaped endpoints and streaming) through Serve's ASGI ingress, with its own scheduler.
Admission maps onto Serve's limits: a replica is sent at most `max_batch_rows + max_queue`
requests at a time (`max_ongoing_requests`: what its scheduler can hold, running and waiting),
and at most `max_queue` more wait in Serve's router (`max_queued_requests`); beyond that Serve
answers 503, and a replica whose own queue is full answers 429 as the plain server does. Every
response names its replica in the `x-seqport-replica` header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from ray import serve

from seqport.batch.shipping import ArtifactSource, materialized
from seqport.engine.errors import ConfigError
from seqport.serving.app import ServeOptions, build_app

logger = logging.getLogger(__name__)
REPLICA_HEADER = "x-seqport-replica"


class _ReplicaHeader:
    """ASGI middleware: adds the replica's id to every HTTP response's headers."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


@serve.deployment
@serve.ingress()
class SeqportReplica:
    """One replica: an engine (loaded with the sha256 checks on) and the server's app over it.

    Args:
        source: the artifact: its path (every node must see it) or its shipped files.
        options: the server's settings, as ServeOptions fields.
        provider: the execution provider.
        threads: onnxruntime intra-op threads (0: the CPUs the replica reserved).
        huge_pages: RuntimeOptions.huge_pages of the replica's engine.
    """

    def __init__(
        self, source: ArtifactSource, options: dict[str, Any], provider: str, threads: int, huge_pages: bool = True
    ) -> None:
        import ray

        from seqport.engine.runtime import RuntimeOptions

        threads = threads or max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        runtime = RuntimeOptions(intra_op_threads=threads, huge_pages=huge_pages)
        self.options = ServeOptions(**options)
        self.model, self._artifact = load_replica_model(source, provider, runtime, self.options.engine_process)
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> Any:
        app = build_app(self.model, self.options)
        app.add_middleware(_ReplicaHeader, replica=self.replica)
        return app


def load_replica_model(
    source: ArtifactSource, provider: str, runtime: Any, engine_process: bool
) -> tuple[Any, contextlib.ExitStack]:
    """A replica's model, and what holds its artifact folder. A shipped copy is removed once the
    model is loaded, unless `engine_process`: the engine process loads the folder again when the
    server starts, so the copy stays until the returned stack is closed (or collected with the replica)."""
    from seqport.engine.api import load

    with contextlib.ExitStack() as stack:
        model = load(stack.enter_context(materialized(source)), provider=provider, options=runtime)
        held = stack.pop_all() if engine_process else contextlib.ExitStack()
    return model, held


def application(
    artifact: str | Path,
    options: ServeOptions | None = None,
    replicas: int = 1,
    replica_cpus: float = 1.0,
    provider: str = "cpu",
    threads: int = 0,
    ship_artifact: bool = False,
    huge_pages: bool = True,
) -> Any:
    """A Serve application of `replicas` replicas serving `artifact` (ray.init() must have run
    when `ship_artifact` is set).

    Args:
        artifact: the artifact folder.
        options: server settings; `max_batch_rows` and `max_queue` also set Serve's limits.
        replicas: how many replicas (each loads its own engine).
        replica_cpus: CPUs each replica reserves.
        provider, threads: the engine's execution provider and intra-op threads (0: replica_cpus).
        ship_artifact: send the artifact's files through the object store instead of its path.
        huge_pages: the replicas' weights onto huge pages after load (RuntimeOptions.huge_pages).

    Returns:
        The bound application, for serve.run().
    """
    from seqport.batch.shipping import ship

    options = options or ServeOptions()
    folder = Path(artifact).resolve()
    options = options if options.model_name else dataclasses.replace(options, model_name=folder.name)
    source = ship(folder) if ship_artifact else ArtifactSource(str(folder))
    deployment = SeqportReplica.options(
        num_replicas=replicas,
        max_ongoing_requests=options.max_batch_rows + options.max_queue,
        max_queued_requests=options.max_queue,
        ray_actor_options={"num_cpus": replica_cpus},
    )
    return deployment.bind(source, dataclasses.asdict(options), provider, threads, huge_pages)


def app_builder(args: dict[str, str]) -> Any:
    """`serve run seqport.serving.ray_app:app_builder artifact=PATH [num_replicas=N] [model_name=NAME]
    [max_batch_rows=N] [max_queue=N] [replica_cpus=C] [provider=P] [scheduler=S] [prefill_lane=L]
    [step_priority=P] ...`: the application from key=value arguments (ServeOptions fields).

    Raises:
        ConfigError: an argument it does not know (a typo would otherwise be ignored).
    """
    kinds = {
        "max_batch_rows": int,
        "max_queue": int,
        "batch_wait_ms": float,
        "kv_budget_mb": float,
        "shutdown_grace_s": float,
        "model_name": str,
        "scheduler": str,
        "prefill_lane": str,
        "step_priority": str,
    }
    known = ["artifact", "num_replicas", "replica_cpus", "provider", *kinds]
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ConfigError(f"unknown app_builder arguments: {', '.join(unknown)} (known: {', '.join(known)})")
    options = ServeOptions(**{key: kinds[key](value) for key, value in args.items() if key in kinds})
    return application(
        args["artifact"],
        options,
        replicas=int(args.get("num_replicas", 1)),
        replica_cpus=float(args.get("replica_cpus", 1)),
        provider=args.get("provider", "cpu"),
    )


def run_on_ray(
    artifact: str | Path,
    address: str,
    host: str,
    port: int,
    options: ServeOptions,
    replicas: int,
    replica_cpus: float,
    provider: str,
    threads: int,
    ship_artifact: bool = False,
    huge_pages: bool = True,
) -> None:
    """`seqport serve --ray`: deploy on the Ray cluster at `address` ("" starts a local one) and
    serve on host:port until interrupted, then delete the deployment."""
    import ray

    ray.init(address=address or None, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    app = application(artifact, options, replicas, replica_cpus, provider, threads, ship_artifact, huge_pages)
    serve.run(app, name="seqport")
    logger.info("serving %s with %d replicas on http://%s:%d", artifact, replicas, host, port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
