"""`seqport batch` throughput: one process against Ray Data with 1 and 2 actors (issue #15).

    python benchmarks/batch_scale.py [--records 4000] [--max-new-tokens 8] [--out benchmarks/results]

The same job (the bundled translator over short lines, greedy) runs four ways, back to back:
in this process with 1 and with 2 onnxruntime threads, then on a local Ray (ray.init with the
machine's CPUs) with a pool of 1 and of 2 actors of 1 CPU each. Each figure is the job's own
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
import os
import platform
import random
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


def run(label: str, artifact: Path, source: Path, out: Path, spec: JobSpec, **kw: Any) -> dict[str, Any]:
    summary = run_job(BatchJob(artifact, source, out / f"{label}.jsonl", spec, shard_size=250, **kw))
    row = {
        "run": label,
        "records": summary.records,
        "seconds": round(summary.seconds, 2),
        "records_per_s": round(summary.records_per_second, 1),
        "tokens_per_s": round(summary.tokens_per_second, 1),
        "failures": summary.failures,
    }
    print(json.dumps(row), file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    import ray

    artifact = bundled_translator()
    spec = JobSpec(generation={"max_new_tokens": args.max_new_tokens}, chunk_size=64)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "in.txt"
        make_input(source, args.records)
        rows = [run("local-1-thread", artifact, source, work, spec, threads=1)]
        rows.append(run("local-2-threads", artifact, source, work, spec, threads=2))
        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        ray_init_s = round(time.perf_counter() - start, 1)
        try:
            rows.append(run("ray-1-actor", artifact, source, work, spec, ray=RayOptions(workers=1)))
            rows.append(run("ray-2-actors", artifact, source, work, spec, ray=RayOptions(workers=2)))
        finally:
            ray.shutdown()
    by = {row["run"]: row for row in rows}
    overhead = {
        "1 cpu (ray-1-actor vs local-1-thread)": by["ray-1-actor"]["seconds"] / by["local-1-thread"]["seconds"] - 1,
        "2 cpus (ray-2-actors vs local-2-threads)": by["ray-2-actors"]["seconds"] / by["local-2-threads"]["seconds"]
        - 1,
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
            "ray_init_seconds": ray_init_s,
        },
        "runs": rows,
        "ray_overhead": {k: round(v, 3) for k, v in overhead.items()},
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
        "| run | seconds | records/s | tokens/s | failures |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        lines.append(
            f"| {row['run']} | {row['seconds']} | {row['records_per_s']} | {row['tokens_per_s']} | {row['failures']} |"
        )
    lines += ["", "Ray's overhead over the plain run at equal CPUs (target <= 15 %):", ""]
    lines += [f"- {name}: {value * 100:+.1f} %" for name, value in result["ray_overhead"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
