"""Run the server with uvicorn; with no artifact, the bundled translator (exported once)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path

from seqport.engine.api import load
from seqport.engine.errors import ArtifactError
from seqport.engine.runtime import RuntimeOptions
from seqport.serving.app import ServeOptions, build_app
from seqport.serving.threads import server_runtime, threads_summary, with_encoder_threads

logger = logging.getLogger(__name__)


def bundled_translator() -> Path:
    """The bundled translator's artifact, exported into the cache the way `seqport demo` does.

    Raises:
        ArtifactError: the export side (torch) is not installed, so it cannot be exported here.
    """
    try:
        bundled = importlib.import_module("seqport.export.bundled")
    except ImportError as exc:
        raise ArtifactError(
            "no artifact given, and the bundled translator must be exported first, which needs torch "
            f"({exc.name} is missing): pass an artifact folder (seqport serve ARTIFACT), or "
            "pip install 'seqport[export]'"
        ) from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # as `seqport demo`: no exporter chatter
    folder, reused = bundled.cached_artifact(bundled.bundled_checkpoint(), progress=False)
    logger.info("bundled translator %s: %s", "reused from the cache" if reused else "exported", folder)
    return folder


def run_server(
    artifact: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    provider: str | None = None,
    runtime: RuntimeOptions | None = None,
    options: ServeOptions | None = None,
    access_log: bool = False,
    encoder_threads: int | None = None,
) -> None:
    """Load `artifact` (None: the bundled translator) and serve it until interrupted.

    Args:
        artifact: an artifact folder written by `seqport export`.
        host, port: where to listen (loopback by default).
        provider: execution provider ("cpu", "cuda", ...); None: `runtime.provider`.
        runtime: backend knobs (threads, graph optimization); None: the server's, as `seqport
            serve` runs it (serving/threads.py, server_runtime()).
        options: server settings (batching, admission, shutdown grace).
        access_log: log a line per HTTP request (uvicorn's access log; off by default: it costs
            the event loop CPU on every request).
        encoder_threads: intra-op threads of an encoder-decoder model's encoder (None: every CPU
            this process may use, see serving/threads.py; 0: onnxruntime decides).

    Raises:
        ArtifactError, ManifestError, ProviderError: as seqport.engine.load() raises them.
    """
    import uvicorn

    options = options or ServeOptions()
    if artifact is None:
        artifact = bundled_translator()
        options = options if options.model_name else dataclasses.replace(options, model_name="translator")
    runtime = runtime or server_runtime()
    if provider is not None:
        runtime = dataclasses.replace(runtime, provider=provider)
    runtime = with_encoder_threads(runtime, artifact, encoder_threads)
    model = load(artifact, options=runtime)
    logger.info("serving %s (%s) on %s, %s", artifact, model.manifest.architecture, runtime.provider,
                threads_summary(runtime))
    options = dataclasses.replace(options, runtime=runtime)  # what an engine process loads it with
    app = build_app(model, options)
    uvicorn.run(
        app, host=host, port=port, log_level="info", access_log=access_log,
        timeout_graceful_shutdown=int(options.shutdown_grace_s) + 1,
    )
