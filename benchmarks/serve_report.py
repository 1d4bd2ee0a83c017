"""serve_load.py's report: its markdown tables and the issue's ratios of one round (stdlib only)."""

from __future__ import annotations

import re
from typing import Any


def table(runs: dict[str, dict[str, Any]]) -> str:
    head = "| run | clients | req/s | tokens/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | "
    head += "server / client CPU ms per request |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    rows = [
        f"| {name} | {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} | "
        f"{r['ttft_p99_ms']:.0f} | {r['e2e_p50_ms']:.0f} | {r['e2e_p99_ms']:.0f} | "
        f"{r.get('server_cpu_ms_per_request', float('nan')):.1f} / {r['client_cpu_ms_per_request']:.1f} |"
        for name, r in runs.items()
    ]
    return head + "\n".join(rows) + "\n"


def stages_table(runs: dict[str, dict[str, Any]]) -> str:
    """Server-side stamps of each run's first tokens: mean ms spent reaching each stage."""
    stages = ("submitted", "admitted", "encoded", "joined", "first_token", "delivered", "written")
    head = "Where a first token's time goes, server side (mean ms to reach each stage from the one before; "
    head += "seqport_first_token_stage_seconds), and the server's rows per decoded batch (continuous "
    head += "batching: per step) and batches per request (seqport_batch_rows), and the share of requests the "
    head += "prefill lane started (seqport_prefill_lane_requests), and the idle-priority decoder calls that "
    head += "missed their deadline (seqport_idle_step_deadline_misses):\n\n| run | " + " | ".join(stages)
    head += " | sum | rows per batch | batches per request | lane share | idle misses |\n"
    head += "|---|" + "---|" * (len(stages) + 5) + "\n"
    rows = []
    for name, r in runs.items():
        means = r.get("first_token_stages_ms", {})
        cells = [f"{means[s]:.2f}" if s in means else "-" for s in stages]
        batches = f"{r.get('rows_per_batch', float('nan')):.1f} | {r.get('batches_per_request', float('nan')):.2f}"
        batches += f" | {r.get('lane_share', float('nan')):.2f} | {r.get('idle_step_misses', float('nan')):.0f}"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {sum(means.values()):.2f} | {batches} |")
    return head + "\n".join(rows) + "\n"


def engine_table(runs: dict[str, dict[str, Any]]) -> str:
    """The in-process runs without HTTP (serve_engine_only.py); "" when skipped."""
    if not runs:
        return ""
    head = "Engine only (no HTTP, same requests, in-process consumers):\n\n"
    head += "| scheduler | clients | req/s | CPU ms per request | TTFT p50 ms | decoder calls per request | "
    head += "rows per decoder call | encoder calls per request | rows per encoder call |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    rows = [
        f"| {name} | {r['clients']} | {r['requests_per_s']:.1f} | {r['cpu_ms_per_request']:.1f} | "
        f"{r['ttft_p50_ms']:.1f} | {r['decoder_calls_per_request']:.2f} | {r['decoder_rows_per_call']:.1f} | "
        f"{r['encoder_calls_per_request']:.2f} | {r['encoder_rows_per_call']:.1f} |"
        for name, r in runs.items()
    ]
    return head + "\n".join(rows) + "\n"


def round_ratios(
    runs: dict[str, dict[str, Any]], engine: dict[str, dict[str, Any]], suffixes: list[str]
) -> dict[str, float]:
    """The issue's ratios for one round, per engine placement (and the engine-only ones when it ran)."""
    ratios = {}
    for suffix in suffixes:
        seq, cont, micro = (runs[name + suffix] for name in
                            ("sequential (continuous server)", "continuous batching", "static micro-batching"))
        key = "_".join(re.findall(r"[\w-]+", suffix))
        key = f"_{key}" if key else ""
        ratios[f"continuous_vs_sequential_rps{key}"] = cont["requests_per_s"] / seq["requests_per_s"]
        ratios[f"continuous_vs_micro_rps{key}"] = cont["requests_per_s"] / micro["requests_per_s"]
        ratios[f"ttft_p50_vs_idle{key}"] = cont["ttft_p50_ms"] / seq["ttft_p50_ms"]
    if engine:
        ratios["engine_only_continuous_vs_micro_rps"] = (
            engine["continuous"]["requests_per_s"] / engine["micro"]["requests_per_s"]
        )
        ratios["engine_only_ttft_p50_vs_idle"] = (
            engine["continuous"]["ttft_p50_ms"] / engine["idle (continuous, 1 consumer)"]["ttft_p50_ms"]
        )
    return ratios


def labelled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One round's runs as they are; several rounds' runs named "NAME (round K)"."""
    if len(rounds) <= 1:
        return rounds[0] if rounds else {}
    return {f"{name} (round {k})": run for k, runs in enumerate(rounds, 1) for name, run in runs.items()}
