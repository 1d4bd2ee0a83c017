"""How many intra-op threads the server gives onnxruntime (`seqport serve --threads`,
`--encoder-threads`)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from seqport.engine.manifest import load_manifest
from seqport.engine.runtime import RuntimeOptions


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """The server's onnxruntime intra-op threads: the CPUs this process may use minus one, at
    least 1. The event loop (HTTP, one SSE chunk per token) and, on a small machine, the clients
    need a core: on 2 cores one intra-op thread served more requests/s than two (docs/serving.md)."""
    return max(1, usable_cpus() - 1)


def server_runtime() -> RuntimeOptions:
    """The server's runtime options where none are given: default_threads() intra-op threads and
    no spinning (a spinning thread would hold the core the event loop and the clients need)."""
    return RuntimeOptions(intra_op_threads=default_threads(), allow_spinning=False)


def with_encoder_threads(runtime: RuntimeOptions, artifact: str | Path, threads: int | None = None) -> RuntimeOptions:
    """`runtime` with an encoder-decoder artifact's encoder on `threads` intra-op threads (None:
    the encoder's entry in runtime.component_threads, else every CPU this process may use; 0:
    onnxruntime decides); other artifacts unchanged.

    The encoder runs once per request, when it starts (on the prefill lane, beside the decoder's
    steps). On 2 cores at 16 clients, with the steps on one thread and the encoder on two, the
    bundled translator's loaded first token fell from 3.06× to 2.53× the idle one (medians of 8
    paired rounds) at the same requests/s (docs/serving.md).

    Raises:
        ArtifactError, ManifestError: as seqport.engine.load() raises them for `artifact`.
    """
    if load_manifest(Path(artifact)).architecture != "encoder-decoder":
        return runtime
    if threads is None:
        if "encoder" in runtime.component_threads:
            return runtime
        threads = usable_cpus()
    return dataclasses.replace(runtime, component_threads={**runtime.component_threads, "encoder": threads})


def threads_summary(runtime: RuntimeOptions) -> str:
    """The intra-op threads `runtime` gives, for the server's start-up line: "intra-op threads 1
    (encoder 2)"; 0 reads "onnxruntime's choice"."""
    def count(n: int) -> str:
        return str(n) if n else "onnxruntime's choice"

    own = ", ".join(f"{name} {count(n)}" for name, n in sorted(runtime.component_threads.items()))
    return f"intra-op threads {count(runtime.intra_op_threads)}" + (f" ({own})" if own else "")
