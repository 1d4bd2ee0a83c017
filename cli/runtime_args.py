"""The `--provider` / `--threads` options of the commands that load an artifact, and the load
that honours them (generate, chat, embed, classify share both; serve and batch the options)."""

from __future__ import annotations

import argparse
from typing import Any


def add_runtime_options(
    p: argparse.ArgumentParser, threads_of: str = "", threads_default: int | None = 0, threads_help: str = ""
) -> None:
    """--provider and --threads, as every artifact-loading command spells them.

    Args:
        p: the command's parser.
        threads_of: what the threads are for when it is not the whole command (" of the local run").
        threads_default: --threads when not given (None: the command picks, as `threads_help` says).
        threads_help: the help of --threads when the command picks its own default.
    """
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    help_ = threads_help or f"intra-op threads{threads_of} (0: onnxruntime decides)"
    p.add_argument("--threads", type=int, default=threads_default, help=help_)


def load_with_runtime_options(args: argparse.Namespace) -> Any:
    """`seqport.engine.load(args.artifact)` on args.provider with args.threads intra-op threads."""
    from seqport.engine.api import load
    from seqport.engine.runtime import RuntimeOptions

    return load(args.artifact, provider=args.provider, options=RuntimeOptions(intra_op_threads=args.threads))
