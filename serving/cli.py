"""`seqport serve`: argparse wiring (the CLI adds it with `add_parser(subparsers)`)."""

from __future__ import annotations

import argparse

from seqport.engine.runtime import RuntimeOptions


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `serve` subcommand; its `run` default is `run(args)`."""
    p = subparsers.add_parser(
        "serve",
        help="serve an artifact over HTTP (OpenAI-compatible API, playground page)",
        description="Serve an artifact with an OpenAI-compatible API (/v1/completions, /v1/chat/completions, "
        "/v1/translations, /v1/embeddings), /metrics and a playground page at /. Needs `pip install "
        "'seqport[serve]'`. With no artifact it serves the bundled translator (exported once; needs torch).",
    )
    p.add_argument("artifact", nargs="?", default=None, help="artifact folder (default: the bundled translator)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime decides)")
    p.add_argument("--model-name", default=None, help="the name clients pass as `model` (default: folder name)")
    p.add_argument("--max-batch-rows", type=int, default=8, help="most decoder rows decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="most waiting requests; more get 429")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a request waits for batch mates")
    p.add_argument("--kv-budget-mb", type=float, default=0.0, help="worst-case KV cache per batch, MiB (0: none)")
    p.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds running requests get on shutdown")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Start the server from parsed `serve` arguments; returns the exit code.

    Raises:
        ConfigError: a limit that is not positive.
        SeqportError: as seqport.engine.load() raises (missing artifact, unknown provider).
    """
    from seqport.engine.errors import ConfigError

    try:
        from seqport.serving.app import ServeOptions
        from seqport.serving.server import run_server
    except ImportError as exc:
        raise ConfigError(
            f"`seqport serve` needs the serve extra: pip install 'seqport[serve]' ({exc.name} is missing)"
        ) from None
    if args.max_batch_rows < 1 or args.max_queue < 1 or args.batch_wait_ms < 0 or args.kv_budget_mb < 0:
        raise ConfigError("--max-batch-rows and --max-queue must be >= 1; --batch-wait-ms and --kv-budget-mb >= 0")
    options = ServeOptions(
        model_name=args.model_name,
        max_batch_rows=args.max_batch_rows,
        max_queue=args.max_queue,
        batch_wait_ms=args.batch_wait_ms,
        kv_budget_mb=args.kv_budget_mb,
        shutdown_grace_s=args.shutdown_grace,
    )
    runtime = RuntimeOptions(intra_op_threads=args.threads)
    run_server(args.artifact, args.host, args.port, provider=args.provider, runtime=runtime, options=options)
    return 0
