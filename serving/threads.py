"""How many intra-op threads the server gives onnxruntime (`seqport serve --threads`)."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The server's onnxruntime intra-op threads: the CPUs this process may use minus one, at
    least 1. The event loop (HTTP, one SSE chunk per token) and, on a small machine, the clients
    need a core: on 2 cores one intra-op thread served more requests/s than two (docs/serving.md)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)
