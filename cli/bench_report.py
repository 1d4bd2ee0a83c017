"""What `seqport bench` writes: each record's context (versions, device, shapes), the table, the plot.

benchmarks/kv_growth.py reuses versions() and device() for its own records.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from seqport.engine.errors import SeqportError
from seqport.engine.manifest import Manifest

SCHEMA = "seqport.bench/1"


def record_context(plan: Any, manifest: Manifest) -> dict[str, Any]:
    """Everything a record needs to be compared later: versions, device, threads, sizes.

    Args:
        plan: the run's seqport.cli.bench_runner.BenchPlan.
        manifest: the artifact's manifest.
    """
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "artifact": plan.artifact,
        "family": manifest.family,
        "architecture": manifest.architecture,
        "weights": {"dynamic-int8": "int8", "fp16": "float16"}.get(
            manifest.quantization.method if manifest.quantization else "", "float32"
        ),
        "kv_cache": manifest.kv.allocation,
        "optimized": manifest.optimization is not None,
        "runtime": plan.runtime,
        "provider": plan.provider,
        "versions": versions(),
        "device": device(),
        "threads": {"intra_op": plan.threads, "inter_op": 0, "cpu_count": os.cpu_count()},
        "batch": plan.batch,
        "lengths": {"input": plan.input_length, "new_tokens": plan.new_tokens},
        "shapes": shapes(manifest),
        "warmup": plan.warmup,
        "repeats": plan.repeats,
        "forced_length": "min_new_tokens=max_new_tokens",
    }


def versions() -> dict[str, str]:
    """Installed versions of Python and of every package a run may use ("" if absent)."""
    found = {"python": platform.python_version()}
    for name in ("seqport", "numpy", "tokenizers", "onnxruntime", "onnxruntime-gpu", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    return found


def device() -> dict[str, Any]:
    """CPU model, logical CPUs, OS and architecture of this machine."""
    model = platform.processor() or ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpu_count": os.cpu_count(), "system": platform.system(), "machine": platform.machine()}


def shapes(manifest: Manifest) -> dict[str, Any]:
    """Model geometry and each component's named input/output dimensions, from the manifest."""
    kv = manifest.kv
    return {
        "vocab_size": manifest.vocab_size,
        "max_positions": manifest.max_positions,
        "kv": dataclasses.asdict(kv) if kv else None,
        "components": {
            name: {
                "inputs": {k: s.shape for k, s in sorted(c.inputs.items())},
                "outputs": {k: s.shape for k, s in sorted(c.outputs.items())},
            }
            for name, c in sorted(manifest.components.items())
        },
    }


def format_table(records: list[dict[str, Any]]) -> str:
    """The records as an aligned text table (ms figures are p50/p90)."""
    header = ("runtime", "batch", "load s", "ttft ms", "step ms", "engine %", "tokens/s", "peak RSS MiB")
    rows = [header]
    for r in records:
        rows.append(
            (
                f"{r['runtime']}:{r['provider']}",
                str(r["batch"]),
                f"{r['load_s']:.2f}",
                _pair(r["ttft_ms"], 1),
                _pair(r["step_ms"], 2),
                "-" if r.get("engine_overhead_pct") is None else f"{r['engine_overhead_pct']:.1f}",
                f"{r['tokens_per_s']:.1f}",
                f"{r['peak_rss_mb']}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def _pair(figures: dict[str, Any], digits: int) -> str:
    if figures["p50"] is None:
        return "-"
    return f"{figures['p50']:.{digits}f}/{figures['p90']:.{digits}f}"


def write_plot(records: list[dict[str, Any]], path: str | Path) -> None:
    """Tokens/s and per-step latency against batch size, one line per runtime (needs matplotlib).

    Raises:
        SeqportError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SeqportError("--plot needs matplotlib: pip install matplotlib") from None
    figure, (speed, step) = plt.subplots(1, 2, figsize=(10, 4))
    for runtime in sorted({f"{r['runtime']}:{r['provider']}" for r in records}):
        mine = sorted((r for r in records if f"{r['runtime']}:{r['provider']}" == runtime), key=lambda r: r["batch"])
        batches = [r["batch"] for r in mine]
        speed.plot(batches, [r["tokens_per_s"] for r in mine], marker="o", label=runtime)
        step.errorbar(
            batches,
            [r["step_ms"]["p50"] for r in mine],
            yerr=[[0] * len(mine), [r["step_ms"]["p90"] - r["step_ms"]["p50"] for r in mine]],
            marker="o",
            capsize=3,
            label=runtime,
        )
    first = records[0]
    title = f"{first['family']}: {first['lengths']['new_tokens']} new tokens"
    speed.set(xlabel="batch size", ylabel="tokens/s", title=title)
    step.set(xlabel="batch size", ylabel="ms per step (p50, bar to p90)", title="per-step latency")
    for axes in (speed, step):
        axes.set_yscale("log")  # runtimes differ by orders of magnitude
        axes.set_xticks(sorted({r["batch"] for r in records}))
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


