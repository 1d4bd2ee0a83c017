"""`seqport serve` under load: continuous batching vs sequential requests vs static micro-batching (issue #14).

    python benchmarks/serve_load.py [--artifact DIR] [--clients 16] [--requests 48] [--threads N]
        [--time-limit 240] [--out benchmarks/results] [--label NAME] [--no-engine-only] [--repeat 1]
        [--ort-spinning] [--engine default|thread|process|both] [--prompts auto|words|sentences]
        [--client lean|httpx] [--prefill-lane first-token,encode,off] [--step-priority idle,normal]
        [--encoder-threads 1,2]

Starts `python -m seqport.serving ARTIFACT` on 127.0.0.1 (a free port) once per scheduler and
sends the same requests (greedy, max_tokens drawn from 4-64, streamed with a usage chunk;
--prompts: real sentences of mixed length for encoder-decoder artifacts, seeded prompts of 2-8
words for the others) three ways: one at a time (continuous server; its median TTFT is
the idle TTFT), from N concurrent clients to the continuous server, and from N concurrent
clients to the micro-batching server (`--scheduler micro`). Reports requests/s, tokens/s and
p50/p99 time to first token and end-to-end latency, with the CPU kind and the load average
(the machine may be shared), in OUT/serve_load[-LABEL].json and .md. Loopback only; every run
is bounded by --requests and --time-limit.

Each HTTP run also records the CPU time the server process (with its engine process under
--engine-process) and the client process spent per request (Linux /proc; what a shared machine
changes least), and the server's mean time per stage of a first token (its
seqport_first_token_stage_seconds). The "engine only" runs then drive
both schedulers in this process with the same requests and N concurrent consumers, without HTTP,
and count the model's decoder and encoder calls and their rows: the requests/s a scheduler
reaches when the HTTP side costs nothing, an upper bound for the HTTP runs' ratio.

--repeat R runs every mode R times, alternating (a shared machine's load then hits each mode
alike), and reports the median of the rounds' ratios; --ort-spinning runs the servers as they
ran before spinning was turned off, for a comparison in one sitting; --prefill-lane L1,L2,...
runs the sequential and continuous servers (and, for the same ratios, the micro-batching one)
with each continuous-batching prefill lane in turn (`seqport serve --prefill-lane`), and
--step-priority P1,P2 likewise with each step priority (`seqport serve --step-priority`), and
--encoder-threads N1,N2 with each encoder thread count (`seqport serve --encoder-threads`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from batch_scale import cpu_kind
from serve_client import SSEConnection, StreamTally
from serve_engine_only import engine_only
from serve_report import engine_table, labelled, round_ratios, stages_table, table

from seqport.serving import default_threads

WORDS = "the house is small where dog cat tea home cold big red blue one two we go today".split()
# 50 held-out English source sentences of the bundled translator (public domain: LICENSE-DATA.md there)
SENTENCES = Path(__file__).resolve().parents[1] / "export" / "models" / "translator" / "test_sentences.tsv"
PROMPTS = ("auto", "words", "sentences")


def word_requests(count: int) -> list[dict[str, Any]]:
    """Seeded prompts of 2-8 words from a 17-word list, max_tokens 4-64 (the translator answers
    every one with ~13 tokens and EOS, so max_tokens almost never binds there)."""
    rng = random.Random(0)
    return [
        {"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))), "max_tokens": rng.randint(4, 64)}
        for _ in range(count)
    ]


def sentence_requests(count: int) -> list[dict[str, Any]]:
    """Real source sentences of mixed length: the translator's held-out sentences in a seeded
    order (cycled), each cut to its first 1..all words, max_tokens 4-64."""
    rng = random.Random(0)
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    sources = [line.split("\t", 1)[0].split() for line in lines if line.strip()]
    order: list[list[str]] = []
    while len(order) < count:
        order += rng.sample(sources, len(sources))
    return [
        {"prompt": " ".join(words[: rng.randint(1, len(words))]), "max_tokens": rng.randint(4, 64)}
        for words in order[:count]
    ]


def prompts_for(artifact: str | None, prompts: str) -> str:
    """The workload `--prompts auto` means: sentences for an encoder-decoder artifact (the bundled
    translator when none is given), words for the others."""
    if prompts != "auto":
        return prompts
    if artifact is None:
        return "sentences"
    manifest = json.loads((Path(artifact) / "seqport.json").read_text(encoding="utf-8"))
    return "sentences" if manifest.get("architecture") == "encoder-decoder" else "words"


def make_requests(count: int, prompts: str = "words") -> list[dict[str, Any]]:
    """`count` request bodies of the workload `prompts` ("words" or "sentences")."""
    return sentence_requests(count) if prompts == "sentences" else word_requests(count)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    artifact: str | None, scheduler: str, clients: int, threads: int | None, spinning: bool = False,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "seqport.serving", *([artifact] if artifact else []), "--port", str(port),
               "--scheduler", scheduler, "--max-batch-rows", str(clients), "--max-queue", "1024",
               *(["--threads", str(threads)] if threads is not None else []), "--model-name", "m",
               *(["--ort-spinning"] if spinning else []), *extra]
    # stderr to a file, not a pipe nobody reads while the server runs: a long run's log lines
    # would fill the pipe and block the server in its next write.
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
    server.log = log  # read by server_log()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server_log(server)[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start in 600 s")


def server_log(server: subprocess.Popen) -> str:
    """What a server started by start_server wrote to its stderr so far."""
    server.log.seek(0)
    return server.log.read()


def process_cpu_s(pid: int, children: bool = True) -> float | None:
    """User + system CPU seconds of process `pid` so far, with its live child processes' (the
    engine process of `--engine-process`); None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            kids = [int(kid) for kid in f.read().split()] if children else []
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(process_cpu_s(kid, children=False) or 0.0 for kid in kids)


async def one_request(client: httpx.AsyncClient, url: str, request: dict[str, Any]) -> dict[str, float]:
    body = {"model": "m", "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **request}
    tally = StreamTally(time.perf_counter())
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                tally.event(line[6:])
    return tally.result()


async def drive(
    url: str, requests: list[dict[str, Any]], clients: int, time_limit: float, lean: bool = True
) -> dict[str, Any]:
    """`clients` concurrent streaming clients work through `requests`; summary figures.
    `lean`: each client is one SSEConnection (serve_client.py), else one shared httpx client."""
    queue = list(reversed(requests))
    records: list[dict[str, float]] = []
    async with httpx.AsyncClient(timeout=time_limit) as client:

        async def worker() -> None:
            connection = SSEConnection(url) if lean else None
            try:
                while queue:
                    request = queue.pop()
                    if connection is None:
                        records.append(await one_request(client, url, request))
                    else:
                        body = {"model": "m", "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}, **request}
                        records.append(await connection.post("/v1/completions", body))
            finally:
                if connection is not None:
                    await connection.close()

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), time_limit)
        wall = time.perf_counter() - start
    ttft, e2e = [r["ttft"] for r in records], [r["e2e"] for r in records]
    return {
        "clients": clients, "requests": len(records), "seconds": wall,
        "requests_per_s": len(records) / wall, "tokens_per_s": sum(r["tokens"] for r in records) / wall,
        "ttft_p50_ms": 1000 * float(np.percentile(ttft, 50)), "ttft_p99_ms": 1000 * float(np.percentile(ttft, 99)),
        "e2e_p50_ms": 1000 * float(np.percentile(e2e, 50)), "e2e_p99_ms": 1000 * float(np.percentile(e2e, 99)),
    }


def stage_totals(url: str) -> dict[str, list[float]]:
    """{stage: [seconds summed, count]} of the server's seqport_first_token_stage_seconds so far,
    and "_rows": [rows summed, batches] of its seqport_batch_rows (continuous batching: steps)."""
    totals: dict[str, list[float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for kind, index in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("seqport_first_token_stage_seconds" + kind):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                totals.setdefault(stage, [0.0, 0.0])[index] = float(line.rsplit(" ", 1)[1])
        for kind, index in (("_sum ", 0), ("_count ", 1)):
            if line.startswith("seqport_batch_rows" + kind):
                totals.setdefault("_rows", [0.0, 0.0])[index] = float(line.rsplit(" ", 1)[1])
        if line.startswith("seqport_prefill_lane_requests_total "):
            totals["_lane"] = [float(line.rsplit(" ", 1)[1]), 0.0]
        if line.startswith("seqport_idle_step_deadline_misses_total "):
            totals["_missed"] = [float(line.rsplit(" ", 1)[1]), 0.0]
    return totals


def batch_figures(before: dict[str, list[float]], after: dict[str, list[float]], requests: int) -> dict[str, float]:
    """Rows per decoded batch (continuous batching: per step) and batches per request between
    two stage_totals() reads."""
    rows0, count0 = before.get("_rows", [0.0, 0.0])
    rows, count = after.get("_rows", [0.0, 0.0])
    if count <= count0:
        return {}
    lane = after.get("_lane", [0.0])[0] - before.get("_lane", [0.0])[0]
    missed = after.get("_missed", [0.0])[0] - before.get("_missed", [0.0])[0]
    return {"rows_per_batch": (rows - rows0) / (count - count0), "batches_per_request": (count - count0) / requests,
            "lane_share": lane / requests, "idle_step_misses": missed}


def stage_means_ms(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, float]:
    """Mean ms per stage of a first token between two stage_totals() reads."""
    out = {}
    for stage, (total, count) in after.items():
        if stage.startswith("_"):
            continue
        total0, count0 = before.get(stage, [0.0, 0.0])
        if count > count0:
            out[stage] = 1000 * (total - total0) / (count - count0)
    return out


def run_mode(
    args: argparse.Namespace, scheduler: str, clients: int, requests: list[dict], extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    server, url = start_server(args.artifact, scheduler, max(clients, 2), args.threads, args.ort_spinning, extra)
    try:
        lean = args.client == "lean"
        asyncio.run(drive(url, requests[:4], min(clients, 4), args.time_limit, lean))  # warm-up
        stages = stage_totals(url)
        server_cpu, client_cpu = process_cpu_s(server.pid), time.process_time()
        result = asyncio.run(drive(url, requests, clients, args.time_limit, lean))
        server_used = process_cpu_s(server.pid)
        stages_after = stage_totals(url)
        result["first_token_stages_ms"] = stage_means_ms(stages, stages_after)
        result.update(batch_figures(stages, stages_after, result["requests"]))
        if server_cpu is not None and server_used is not None:
            result["server_cpu_ms_per_request"] = 1000 * (server_used - server_cpu) / result["requests"]
        result["client_cpu_ms_per_request"] = 1000 * (time.process_time() - client_cpu) / result["requests"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    result["scheduler_log"] = next((line for line in server_log(server).splitlines() if "batching" in line), "")
    print(f"{scheduler} x{clients} {' '.join(extra)}: {result['requests_per_s']:.2f} req/s", file=sys.stderr)
    return result


# --engine: run-name suffix -> the servers' extra flags
ENGINES = {
    "default": {"": ()},
    "thread": {"": ("--no-engine-process",)},
    "process": {"": ("--engine-process",)},
    "both": {" [thread]": ("--no-engine-process",), " [engine process]": ("--engine-process",)},
}


def with_variants(
    engines_of: dict[str, tuple[str, ...]], option: str, values: str, label: str
) -> dict[str, tuple[str, ...]]:
    """Every server of `engines_of` with each value of the comma-separated `values` of the
    server flag `option` ("": the server's default), named "[label value]"; one value names no
    suffix."""
    names = [value.strip() for value in values.split(",") if value.strip()]
    if not names:
        return engines_of
    return {
        (f"{suffix} [{label} {value}]" if len(names) > 1 else suffix): (*extra, option, value)
        for suffix, extra in engines_of.items()
        for value in names
    }


def run_rounds(
    args: argparse.Namespace, requests: list[dict], engines_of: dict[str, tuple[str, ...]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every mode --repeat times, alternating (a shared machine's load hits each alike): the
    HTTP runs of each round, and the engine-only runs (none with --no-engine-only)."""
    rounds, engines = [], []
    for _ in range(args.repeat):
        runs = {}
        for suffix, extra in engines_of.items():
            runs[f"sequential (continuous server){suffix}"] = run_mode(args, "continuous", 1, requests, extra)
            runs[f"continuous batching{suffix}"] = run_mode(args, "continuous", args.clients, requests, extra)
            runs[f"static micro-batching{suffix}"] = run_mode(args, "micro", args.clients, requests, extra)
        rounds.append(runs)
        if not args.no_engine_only:
            engines.append(engine_only(args.artifact, requests, args.clients, args.threads, args.ort_spinning))
    return rounds, engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default=None, help="artifact folder (default: the bundled translator)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None,
                        help="the server's intra-op threads (default: the server's own, CPUs - 1; 0: ORT decides)")
    parser.add_argument("--time-limit", type=float, default=240.0, help="seconds per run at most")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--label", default="", help="suffix of the result files (serve_load-LABEL.json)")
    parser.add_argument("--no-engine-only", action="store_true", help="skip the in-process runs without HTTP")
    parser.add_argument("--ort-spinning", action="store_true", help="servers (and engine-only runs) spin, as before")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every mode, alternating; ratios: median")
    parser.add_argument("--prompts", choices=PROMPTS, default="auto",
                        help="the workload: 'sentences' (the translator's held-out English sentences cut to 1..all "
                        "words: mixed lengths), 'words' (2-8 words from a 17-word list), or 'auto' (default: "
                        "sentences for an encoder-decoder artifact, words for the others)")
    parser.add_argument("--client", choices=("lean", "httpx"), default="lean",
                        help="the clients: 'lean' (default: asyncio streams, serve_client.py; the clients share "
                        "the server's cores, so they should cost it little) or 'httpx' (as before)")
    parser.add_argument("--engine", choices=("default", "thread", "process", "both"), default="default",
                        help="the servers' engine: the server's default, a worker thread (--no-engine-process), "
                        "a process of its own (--engine-process), or both in turn (ratios of each)")
    parser.add_argument("--prefill-lane", default="",
                        help="comma-separated prefill lanes of the continuous servers (first-token, encode, off), "
                        "each run in turn with its own ratios (default: the server's default lane)")
    parser.add_argument("--step-priority", default="",
                        help="comma-separated step priorities of the continuous servers (idle, normal), each run in "
                        "turn with its own ratios (default: the server's default)")
    parser.add_argument("--encoder-threads", default="",
                        help="comma-separated encoder intra-op threads of the servers (an encoder-decoder artifact), "
                        "each run in turn with its own ratios (default: the server's default, every CPU)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    engines_of = with_variants(ENGINES.get(args.engine, ENGINES["both"]), "--prefill-lane", args.prefill_lane, "lane")
    engines_of = with_variants(engines_of, "--step-priority", args.step_priority, "step")
    engines_of = with_variants(engines_of, "--encoder-threads", args.encoder_threads, "encoder threads")
    workload = prompts_for(args.artifact, args.prompts)
    rounds, engines = run_rounds(args, make_requests(min(args.requests, 256), workload), engines_of)
    per_round = [
        round_ratios(runs, engine, list(engines_of)) for runs, engine in zip(rounds, engines or [{}] * len(rounds))
    ]
    ratios = {key: float(np.median([r[key] for r in per_round])) for key in per_round[0]}
    runs = labelled(rounds)
    engine = labelled(engines)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "artifact": args.artifact or "bundled translator", "prompts": workload, "client": args.client,
        "cpu": cpu_kind(),
        "threads": args.threads if args.threads is not None else f"server default ({default_threads()})",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "runs": runs, "engine_only": engine, "ratios": ratios, "ratios_per_round": per_round,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serve_load" + (f"-{args.label}" if args.label else "")
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    cpu = record["cpu"]
    flags = ", ".join(flag for flag, present in cpu["flags"].items() if present) or "none of the listed"
    md = f"# serve_load: {record['artifact']}\n\n{record['date']}; {cpu['model_name']}, {cpu['cpus']} CPUs ({flags}); "
    md += f"load average {load_before[0]:.2f} before, {record['load_average_after'][0]:.2f} after; "
    md += f"intra-op threads: {record['threads']}; prompts: {workload}; client: {args.client}.\n\n"
    md += table(runs) + "\n" + stages_table(runs) + "\n" + engine_table(engine) + "\n"
    md += "median of the rounds: " if args.repeat > 1 else ""
    md += "; ".join(f"{k} = {v:.2f}" for k, v in ratios.items())
    md += "\n"
    (args.out / f"{stem}.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
