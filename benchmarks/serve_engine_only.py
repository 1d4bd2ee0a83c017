"""The serving schedulers without HTTP: what continuous batching can win over static micro-batching
on a workload when the HTTP side costs nothing (used by serve_load.py; runs on its own too).

    python benchmarks/serve_engine_only.py [--artifact DIR] [--clients 16] [--requests 96] [--threads N]
        [--prompts auto|words|sentences]

Loads the artifact in this process (intra-op spinning off, as `seqport serve` runs it), turns the
serve_load requests into scheduler requests the way /v1/completions does, and has N concurrent
consumers work through them on one asyncio loop, for each scheduler. Counts the model's decoder
calls (and their rows) and encoder calls, and the process CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import seqport.engine as sp
from seqport.engine.runtime import RuntimeOptions
from seqport.serving import GenerationRequest, SchedulerLimits, bundled_translator, default_threads
from seqport.serving.protocol import generation_config
from seqport.serving.scheduler_choice import make_scheduler
from seqport.serving.threads import with_encoder_threads


class _Counted:
    """Wraps a model method; records the batch rows of every call."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method, self.rows = method, []

    def __call__(self, first: Any, *args: Any, **kwargs: Any) -> Any:
        ids = first["input_ids"] if isinstance(first, dict) else first  # run_decoder(feeds, ...) / encode(ids, mask)
        self.rows.append(int(ids.shape[0]))
        return self.method(first, *args, **kwargs)


def _requests(model: Any, bodies: list[dict[str, Any]]) -> list[GenerationRequest]:
    out = []
    for i, body in enumerate(bodies):
        config = generation_config({"temperature": 0, **body}, model.default_config)
        out.append(GenerationRequest(f"r{i}", list(model.input_ids([body["prompt"]])[0]), config))
    return out


async def _drive(scheduler: Any, requests: list[GenerationRequest], clients: int) -> list[tuple[float, float]]:
    waiting, records = list(reversed(requests)), []

    async def consumer() -> None:
        while waiting:
            request = waiting.pop()
            start, first = time.perf_counter(), None
            async for _ in await scheduler.submit(request):
                first = first or time.perf_counter()
            records.append(((first or time.perf_counter()) - start, time.perf_counter() - start))

    await asyncio.gather(*(consumer() for _ in range(clients)))
    return records


def run_scheduler(model: Any, kind: str, requests: list[GenerationRequest], clients: int) -> dict[str, Any]:
    """One scheduler's figures for `requests` from `clients` concurrent consumers."""
    scheduler = make_scheduler(model, SchedulerLimits(max_batch_rows=max(clients, 2), max_queue=1024), kind)
    try:
        asyncio.run(_drive(scheduler, requests[:4], min(clients, 4)))  # warm-up
        decoder, encoder = _Counted(model.run_decoder), _Counted(getattr(model, "encode", None) or (lambda x: x))
        model.run_decoder, model.encode = decoder, encoder
        cpu, start = time.process_time(), time.perf_counter()
        records = asyncio.run(_drive(scheduler, requests, clients))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for name in ("run_decoder", "encode"):
            model.__dict__.pop(name, None)
        scheduler.close(5.0)
    n = len(records)
    return {
        "clients": clients, "requests": n, "requests_per_s": n / wall, "cpu_ms_per_request": 1000 * cpu / n,
        "ttft_p50_ms": 1000 * float(np.median([r[0] for r in records])),
        "e2e_p50_ms": 1000 * float(np.median([r[1] for r in records])),
        "decoder_calls_per_request": len(decoder.rows) / n,
        "decoder_rows_per_call": float(np.mean(decoder.rows)) if decoder.rows else 0.0,
        "encoder_calls_per_request": len(encoder.rows) / n,
        "encoder_rows_per_call": float(np.mean(encoder.rows)) if encoder.rows else 0.0,
    }  # fmt: skip


def engine_only(
    artifact: str | None, bodies: list[dict[str, Any]], clients: int, threads: int | None, spinning: bool = False
) -> dict[str, Any]:
    """Continuous and micro-batching figures (and idle TTFT: one consumer) without HTTP;
    `threads` None: the server's default (seqport.serving.default_threads()); the encoder of an
    encoder-decoder artifact gets the server's default too (every CPU)."""
    threads = default_threads() if threads is None else threads
    folder = artifact or bundled_translator()
    options = with_encoder_threads(RuntimeOptions(intra_op_threads=threads, allow_spinning=spinning), folder)
    model = sp.load(folder, options=options)
    requests = _requests(model, bodies)
    runs = {kind: run_scheduler(model, kind, requests, clients) for kind in ("continuous", "micro")}
    runs["idle (continuous, 1 consumer)"] = run_scheduler(model, "continuous", requests[:24], 1)
    return runs


def main() -> None:
    from serve_load import PROMPTS, make_requests, prompts_for

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default=None, help="artifact folder (default: the bundled translator)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the server's)")
    parser.add_argument("--prompts", choices=PROMPTS, default="auto", help="the workload, as serve_load.py's")
    args = parser.parse_args()
    bodies = make_requests(min(args.requests, 256), prompts_for(args.artifact, args.prompts))
    runs = engine_only(args.artifact, bodies, args.clients, args.threads)
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
