"""`seqport batch`: argparse wiring (the CLI adds it with `add_parser(subparsers)`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from seqport.cli.runtime_args import add_runtime_options


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `batch` subcommand; its `run` default is `run(args)`."""
    p = subparsers.add_parser(
        "batch",
        help="run an offline generate/translate/embed job over a file (here, or on Ray with --ray)",
        description="Run an artifact over every record of a text, JSONL or Parquet file and write the results in "
        "input order, each with an id. Work is done in shards stored in OUTPUT.parts/ as they finish: a rerun "
        "skips the finished ones. Runs in this process; --ray runs the same job on a Ray cluster "
        "(pip install 'seqport[ray]').",
    )
    p.add_argument("artifact", help="artifact folder written by `seqport export`")
    p.add_argument("--input", required=True, help="input file: .txt (one record per line), .jsonl or .parquet")
    p.add_argument("--output", required=True, help="output file: .jsonl, .parquet or .txt (one output per line)")
    p.add_argument("--input-format", choices=("text", "jsonl", "parquet"), help="default: from the suffix")
    p.add_argument("--output-format", choices=("text", "jsonl", "parquet"), help="default: from the suffix")
    p.add_argument("--task", choices=("generate", "translate", "embed"), help="default: what the artifact does")
    p.add_argument("--field", default="text", help="the field holding the text (JSONL/Parquet; default: text)")
    p.add_argument("--id-field", default="id", help="the output field holding each record's input position")
    p.add_argument("--max-new-tokens", type=int, help="most tokens generated per record (default: the artifact's)")
    p.add_argument("--num-beams", type=int, help="beam width (default: the artifact's)")
    p.add_argument("--truncate", action="store_true", help="cut over-long inputs instead of failing those records")
    p.add_argument("--batch-size", type=int, default=32, help="records per engine call (default 32)")
    p.add_argument(
        "--shard-size", type=int, default=1000, help="records per shard (the unit of resuming and of Ray work)"
    )
    add_runtime_options(p, threads_of=" of the local run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--record-worker", action="store_true", help="add a `worker` field (node id:pid) to each record")
    ray = p.add_argument_group("Ray (pip install 'seqport[ray]')")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: no ADDRESS starts or joins the local Ray as ray.init() does; "
        "'auto', HOST:PORT or ray://HOST:PORT join that cluster",
    )
    ray.add_argument("--workers", type=int, default=0, help="actors in the pool (0: cluster CPUs // --cpus-per-worker)")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (and onnxruntime threads) per actor")
    ray.add_argument(
        "--ship-artifact",
        action="store_true",
        help="send the artifact through the object store (small ones; else every node needs its path)",
    )
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the job from parsed `batch` arguments; prints the summary; returns the exit code
    (0, or 1 when some records failed: they are in the output with an `error` field).

    Raises:
        ConfigError: bad options, an existing output, shards of another job, --ray without Ray.
        ArtifactError: the artifact or the input does not exist.
    """
    from seqport.batch.job import run_job
    from seqport.batch.job_types import BatchJob, RayOptions
    from seqport.batch.progress import ProgressBar, summary_line
    from seqport.batch.records import count_records, file_format
    from seqport.batch.work import JobSpec

    generation = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("num_beams", args.num_beams)) if v}
    spec = JobSpec(
        task=args.task,
        text_field=args.field,
        id_field=args.id_field,
        generation=generation,
        chunk_size=args.batch_size,
        truncate=args.truncate,
        worker_field="worker" if args.record_worker else None,
    )
    ray = None
    if args.ray is not None:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar replaces its per-dataset chatter
        ray = RayOptions(args.ray, args.workers, args.cpus_per_worker, args.ship_artifact)
    job = BatchJob(
        args.artifact,
        args.input,
        args.output,
        spec,
        args.input_format,
        args.output_format,
        args.shard_size,
        args.provider,
        args.threads,
        ray,
        args.overwrite,
    )
    source = Path(args.input)
    bar = ProgressBar(count_records(source, file_format(source, args.input_format)) if source.is_file() else 0)
    try:
        summary = run_job(job, bar)
    finally:
        bar.close()
    print(summary_line(summary), file=sys.stderr)
    return 1 if summary.failures else 0
