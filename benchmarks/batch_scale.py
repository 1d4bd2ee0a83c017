"""`seqport batch` throughput: one process against Ray Data with 1 and 2 actors (issue #15).

    python benchmarks/batch_scale.py [--records 4000] [--max-new-tokens 8] [--repeats 3] [--out benchmarks/results]

The same job (the bundled translator over short lines, greedy) runs four ways: in this process
with 1 and with 2 onnxruntime threads, and on a local Ray (ray.init with the machine's CPUs)
with a pool of 1 and of 2 actors of 1 CPU each, in interleaved rounds (`--repeats`), so a load
change on a shared machine hits every configuration; best and median times are reported. Each figure is the job's own
wall time (`JobSummary.seconds`: model loading, actor start-up, the work and the shard files;
not ray.init, reported apart). The overhead of Ray is its time over the plain run's at equal
CPUs (1 actor vs 1 thread, 2 actors vs 2 threads); the target is <= 15 %. Writes
OUT/batch_scale.json and OUT/batch_scale.md with the CPU model and flags and the load average,
since a shared machine moves the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from seqport.batch import BatchJob, JobSpec, RayOptions, run_job
from seqport.serving.server import bundled_translator

WORDS = "the house is small where dog cat tea home cold big red blue one two we go today".split()
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_kind() -> dict[str, Any]:
    """lscpu's model name, CPU count and which of the vector extensions that matter it has."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {
        "model_name": fields.get("Model name", platform.processor()).strip(),
        "cpus": os.cpu_count(),
        "flags": {flag: flag in flags for flag in FLAGS},
    }


def make_input(path: Path, records: int) -> None:
    rng = random.Random(0)
    lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(records))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


CONFIGS = {  # label -> BatchJob keywords
    "local-1-thread": {"threads": 1},
    "ray-1-actor": {"ray": RayOptions(workers=1)},
    "local-2-threads": {"threads": 2},
    "ray-2-actors": {"ray": RayOptions(workers=2)},
}


def run(label: str, artifact: Path, source: Path, out: Path, spec: JobSpec) -> float:
    """One job; returns its own wall time in seconds."""
    summary = run_job(
        BatchJob(artifact, source, out / f"{label}.jsonl", spec, shard_size=250, overwrite=True, **CONFIGS[label])
    )
    assert summary.failures == 0 and summary.processed == summary.records, summary
    print(f"{label}: {summary.seconds:.2f} s", file=sys.stderr)
    return summary.seconds


def rows_of(records: int, tokens: int, seconds: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for label, times in seconds.items():
        best, median = min(times), statistics.median(times)
        rows.append(
            {
                "run": label,
                "seconds": [round(t, 2) for t in times],
                "best_s": round(best, 2),
                "median_s": round(median, 2),
                "records_per_s": round(records / best, 1),
                "tokens_per_s": round(tokens / best, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each round runs every configuration once")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset otherwise
    artifact = bundled_translator()
    spec = JobSpec(generation={"max_new_tokens": args.max_new_tokens}, chunk_size=64)
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {label: [] for label in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "in.txt"
        make_input(source, args.records)
        tokens = run_job(BatchJob(artifact, source, work / "reference.jsonl", spec, threads=1)).tokens  # warm-up
        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        ray_init_s = round(time.perf_counter() - start, 1)
        try:
            for _ in range(args.repeats):  # interleaved: a load change on a shared machine hits every configuration
                for label in CONFIGS:
                    seconds[label].append(run(label, artifact, source, work, spec))
        finally:
            ray.shutdown()
    rows = rows_of(args.records, tokens, seconds)
    by = {row["run"]: row for row in rows}
    pairs = {"1 cpu": ("ray-1-actor", "local-1-thread"), "2 cpus": ("ray-2-actors", "local-2-threads")}
    overhead = {
        f"{name} ({ray_run} vs {local_run}), {stat}": round(by[ray_run][stat] / by[local_run][stat] - 1, 3)
        for name, (ray_run, local_run) in pairs.items()
        for stat in ("best_s", "median_s")
    }
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_kind(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "ray": ray.__version__,
            "records": args.records,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "ray_init_seconds": ray_init_s,
        },
        "runs": rows,
        "ray_overhead": overhead,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_scale.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "batch_scale.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    cpu = meta["cpu"]
    flags = ", ".join(f for f, present in cpu["flags"].items() if present) or "none of " + ", ".join(FLAGS)
    lines = [
        "# seqport batch: one process vs Ray Data (benchmarks/batch_scale.py)",
        "",
        f"{meta['date']}; {cpu['model_name']}, {cpu['cpus']} CPUs (flags: {flags}); Ray {meta['ray']}; "
        f"{meta['records']} records, max_new_tokens {meta['max_new_tokens']}, bundled translator, greedy; "
        f"load average before/after: {meta['load_average_before']} / {meta['load_average_after']}; "
        f"ray.init: {meta['ray_init_seconds']} s (not counted below).",
        "",
        f"{meta['repeats']} interleaved rounds; records/s and tokens/s from the best time.",
        "",
        "| run | seconds (each round) | best s | median s | records/s | tokens/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        times = ", ".join(str(t) for t in row["seconds"])
        lines.append(
            f"| {row['run']} | {times} | {row['best_s']} | {row['median_s']} | {row['records_per_s']} "
            f"| {row['tokens_per_s']} |"
        )
    lines += ["", "Ray's overhead over the plain run at equal CPUs (target <= 15 %):", ""]
    lines += [f"- {name}: {value * 100:+.1f} %" for name, value in result["ray_overhead"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
