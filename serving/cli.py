"""`seqport serve`: argparse wiring (the CLI adds it with `add_parser(subparsers)`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import TYPE_CHECKING

from seqport.cli.runtime_args import add_runtime_options
from seqport.engine.runtime import RuntimeOptions
from seqport.serving.step_priority import STEP_PRIORITIES
from seqport.serving.threads import default_threads, usable_cpus

if TYPE_CHECKING:
    from seqport.serving.app import ServeOptions


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
    threads_help = (
        "intra-op threads of the model (default: the CPUs this process may use minus one, at least 1; here "
        f"{default_threads()}: the event loop, HTTP and a small machine's clients need a core; 0: onnxruntime decides)"
    )
    add_runtime_options(p, threads_default=None, threads_help=threads_help)
    p.add_argument("--encoder-threads", type=int, default=None, metavar="N",
                   help="intra-op threads of an encoder-decoder model's encoder (default: every CPU this process may "
                   f"use, here {usable_cpus()}: the encoder runs once per request, as it starts, and a loaded "
                   "server's first tokens come sooner; 0: onnxruntime decides). Other models, and Ray replicas: "
                   "--threads")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let onnxruntime's idle intra-op threads spin (its default; off in the server, whose event "
                   "loop and clients need those cores)")
    p.add_argument("--model-name", default=None, help="the name clients pass as `model` (default: folder name)")
    p.add_argument("--max-batch-rows", type=int, default=8, help="most decoder rows decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="most waiting requests; more get 429")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a request waits for batch mates")
    p.add_argument("--kv-budget-mb", type=float, default=0.0, help="worst-case KV cache per batch, MiB (0: none)")
    p.add_argument("--scheduler", choices=("continuous", "micro"), default="continuous",
                   help="continuous: iteration-level batching where the artifact supports it (else micro, "
                   "logged); micro: static micro-batching (default: continuous)")
    p.add_argument("--prefill-lane", choices=("first-token", "encode", "off"), default="first-token",
                   help="continuous batching: a thread beside the worker starts new requests while the running "
                   "batch steps. first-token: it prefills them and streams their first tokens at once (an "
                   "encoder-decoder row gets a decoder call of its own); encode: it prefills, and an "
                   "encoder-decoder row's first token comes from the worker's next step; off: the worker admits "
                   "between two steps (as before; the engine process always does). Default: first-token")
    p.add_argument("--step-priority", choices=STEP_PRIORITIES, default="normal",
                   help="continuous batching: normal (default): the worker makes the running batch's decoder call; "
                   "idle: while steps take 1 ms or more, it runs on a thread at Linux's SCHED_IDLE, so new "
                   "requests' prefills, the HTTP side and the rest of this process's group go first: earlier first "
                   "tokens under load, somewhat fewer requests/s (docs/serving.md). A call that waits past its "
                   "deadline is made at normal priority instead. CPU provider, Linux only")
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=False,
                   help="run the scheduler and the model in a child process, the HTTP event loop in this one "
                   "(no shared GIL; default: a worker thread)")
    p.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds running requests get on shutdown")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False,
                   help="log a line per HTTP request (uvicorn's access log; default: off, as vLLM's request log: "
                   "it costs the event loop CPU on every request)")
    ray = p.add_argument_group("Ray Serve (pip install 'seqport[serve,ray]')")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="serve as a Ray Serve deployment: no ADDRESS starts or joins the local Ray as ray.init() "
                     "does; 'auto' or HOST:PORT join that cluster")
    ray.add_argument("--replicas", type=int, default=1, help="replicas, each with its own engine (default 1)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs each replica reserves (its threads)")
    ray.add_argument("--ship-artifact", action="store_true",
                     help="send the artifact through the object store (small ones; else every node needs its path)")
    p.set_defaults(run=run)
    return p


def show_startup_lines() -> None:
    """Let the server's INFO lines through (which artifact, scheduler and threads it serves with):
    `seqport` logs warnings only, and `python -m seqport.serving` configures no logging at all."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="seqport: %(levelname)s: %(message)s")
    serving = logging.getLogger("seqport.serving")
    if serving.getEffectiveLevel() > logging.INFO:
        serving.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    """Start the server from parsed `serve` arguments; returns the exit code.

    Raises:
        ConfigError: a limit that is not positive.
        SeqportError: as seqport.engine.load() raises (missing artifact, unknown provider).
    """
    from seqport.engine.errors import ConfigError

    show_startup_lines()
    try:
        from seqport.serving.app import ServeOptions
        from seqport.serving.server import run_server
    except ImportError as exc:
        raise ConfigError(
            f"`seqport serve` needs the serve extra: pip install 'seqport[serve]' ({exc.name} is missing)"
        ) from None
    if args.max_batch_rows < 1 or args.max_queue < 1 or args.batch_wait_ms < 0 or args.kv_budget_mb < 0:
        raise ConfigError("--max-batch-rows and --max-queue must be >= 1; --batch-wait-ms and --kv-budget-mb >= 0")
    if (args.threads or 0) < 0 or (args.encoder_threads or 0) < 0:
        raise ConfigError("--threads and --encoder-threads must be >= 0 (0: onnxruntime decides)")
    options = ServeOptions(
        model_name=args.model_name,
        max_batch_rows=args.max_batch_rows,
        max_queue=args.max_queue,
        batch_wait_ms=args.batch_wait_ms,
        kv_budget_mb=args.kv_budget_mb,
        shutdown_grace_s=args.shutdown_grace,
        scheduler=args.scheduler,
        prefill_lane=args.prefill_lane,
        step_priority=args.step_priority,
        engine_process=args.engine_process,
    )
    if getattr(args, "ray", None) is not None:
        return _run_on_ray(args, options)
    threads = default_threads() if args.threads is None else args.threads
    runtime = RuntimeOptions(
        intra_op_threads=threads, allow_spinning=args.ort_spinning, huge_pages=args.huge_pages
    )
    run_server(
        args.artifact, args.host, args.port, provider=args.provider, runtime=runtime, options=options,
        access_log=args.access_log, encoder_threads=args.encoder_threads,
    )
    return 0


def _run_on_ray(args: argparse.Namespace, options: ServeOptions) -> int:
    """`seqport serve --ray`: deploy on Ray Serve and serve until interrupted."""
    from seqport.engine.errors import ConfigError

    if args.encoder_threads is not None:
        raise ConfigError("--encoder-threads is for the local server: a Ray replica runs every component on the "
                          "CPUs it reserves (--replica-cpus, --threads)")
    try:
        from seqport.serving import ray_app
    except ImportError as exc:
        raise ConfigError(
            f"`seqport serve --ray` needs Ray Serve ({exc.name} is missing): pip install 'seqport[serve,ray]'"
        ) from None
    if args.replicas < 1 or args.replica_cpus <= 0:
        raise ConfigError("--replicas must be >= 1 and --replica-cpus > 0")
    artifact = args.artifact
    if artifact is None:
        from seqport.serving.server import bundled_translator

        artifact = bundled_translator()
        if options.model_name is None:
            options = dataclasses.replace(options, model_name="translator")
    ray_app.run_on_ray(
        artifact, args.ray, args.host, args.port, options, args.replicas, args.replica_cpus, args.provider,
        args.threads or 0, args.ship_artifact, args.huge_pages,
    )
    return 0
