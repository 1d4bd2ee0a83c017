"""The `--provider` / `--threads` options of the commands that load an artifact, and the load
that honours them (generate, chat, embed, classify share both; serve and batch the options)."""

from __future__ import annotations

import argparse
from typing import Any


def add_runtime_options(
    p: argparse.ArgumentParser, threads_of: str = "", threads_default: int | None = 0, threads_help: str = ""
) -> None:
    """--provider, --threads and --no-huge-pages, as every artifact-loading command spells them.

    Args:
        p: the command's parser.
        threads_of: what the threads are for when it is not the whole command (" of the local run").
        threads_default: --threads when not given (None: the command picks, as `threads_help` says).
        threads_help: the help of --threads when the command picks its own default.
    """
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    help_ = threads_help or f"intra-op threads{threads_of} (0: onnxruntime decides)"
    p.add_argument("--threads", type=int, default=threads_default, help=help_)
    p.add_argument("--no-huge-pages", dest="huge_pages", action="store_false",
                   help="keep the weights on 4 KiB pages: a faster load (up to 2.5 ms per MiB of weights), a "
                   "slower decode where the weights are large (Linux; see docs/runtimes.md, \"Huge pages\")")


def load_with_runtime_options(args: argparse.Namespace) -> Any:
    """`seqport.engine.load(args.artifact)` on args.provider with args.threads intra-op threads
    (and args.huge_pages)."""
    from seqport.engine.api import load
    from seqport.engine.runtime import RuntimeOptions

    options = RuntimeOptions(intra_op_threads=args.threads, huge_pages=args.huge_pages)
    return load(args.artifact, provider=args.provider, options=options)
