"""A batch job: input file → shards → (this process | Ray) → ordered output file, resumable.

from seqport.batch import BatchJob, run_job
summary = run_job(BatchJob("artifacts/translator", "in.txt", "out.jsonl"))
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from seqport.batch.job_types import BatchJob, JobSummary, Progress
from seqport.batch.records import Record, file_format, read_records, write_output
from seqport.batch.shards import ShardStore
from seqport.engine.errors import ArtifactError, ConfigError
from seqport.engine.manifest import load_manifest


def run_job(job: BatchJob, progress: Progress | None = None) -> JobSummary:
    """Run `job` to completion and merge its shards into the output, in input order.

    Args:
        job: the job.
        progress: called as shards finish with (records, tokens).

    Returns:
        The summary (tokens and records/s count this run's work only).

    Raises:
        ConfigError: bad options, an existing output, shards of another job, Ray missing.
        ArtifactError: the artifact or input does not exist.
        SeqportError: as seqport.engine.load() raises for the artifact.
    """
    _check(job)
    job = dataclasses.replace(job, spec=job.spec.resolved(load_manifest(Path(job.artifact)).architecture))
    input_path, output = Path(job.input), Path(job.output)
    in_fmt = file_format(input_path, job.input_format)
    out_fmt = file_format(output, job.output_format)
    store = ShardStore(output, _fingerprint(job, in_fmt, out_fmt))
    store.open()
    try:
        todo, done = _split(store, read_records(input_path, in_fmt, job.spec.text_field, job.spec.id_field), job)
        start = time.perf_counter()
        made = _runner(job)(job, todo, store, progress)
    except BaseException:
        if store.empty():  # nothing to resume: a rerun with other settings must not be refused
            store.remove()
        raise
    seconds = time.perf_counter() - start
    count = len(todo) + len(done)
    infos = [info for _, info in done] + made
    written = write_output(output, out_fmt, store.rows(count), job.spec.output_field or "output")
    store.remove()
    return JobSummary(
        records=written,
        processed=sum(i.records for i in made),
        skipped_shards=len(done),
        tokens=sum(i.tokens for i in made),
        failures=sum(i.failures for i in infos),
        seconds=seconds,
        output=output,
    )


def _check(job: BatchJob) -> None:
    problems = []
    if job.shard_size < 1:
        problems.append(f"shard_size must be >= 1, got {job.shard_size}")
    if job.spec.chunk_size < 1:
        problems.append(f"chunk_size (--batch-size) must be >= 1, got {job.spec.chunk_size}")
    if job.ray is not None and (job.ray.workers < 0 or job.ray.cpus_per_worker <= 0):
        problems.append("--workers must be >= 0 and --cpus-per-worker > 0")
    output = Path(job.output)
    parts = output.with_name(output.name + ".parts")
    if output.exists() and not parts.exists() and not job.overwrite:
        problems.append(f"the output {output} exists; pass --overwrite to replace it")
    if problems:
        raise ConfigError("; ".join(problems))
    if not Path(job.input).is_file():
        raise ArtifactError(f"input file {job.input} does not exist; pass an existing --input file")
    if not (Path(job.artifact) / "seqport.json").is_file():
        raise ArtifactError(
            f"{job.artifact} is not an artifact folder (no seqport.json); pass a folder `seqport export` wrote"
        )


def _split(store: ShardStore, records: Iterator[Record], job: BatchJob) -> tuple[list, list]:
    """(shards still to run as (index, records), finished shards as (index, ShardInfo))."""
    todo, done = [], []
    for index, records_of_shard in _shards(records, job.shard_size):
        info = store.done(index)
        if info is None:
            todo.append((index, records_of_shard))
        else:
            done.append((index, info))
    return todo, done


def _runner(job: BatchJob) -> Callable:
    if job.ray is None:
        from seqport.batch.local import run_local

        return run_local
    from seqport.batch.on_ray import run_on_ray

    return run_on_ray


def _shards(records: Iterator[Record], size: int) -> Iterator[tuple[int, list[Record]]]:
    shard: list[Record] = []
    index = 0
    for record in records:
        shard.append(record)
        if len(shard) == size:
            yield index, shard
            index, shard = index + 1, []
    if shard:
        yield index, shard


def _fingerprint(job: BatchJob, in_fmt: str, out_fmt: str) -> dict[str, Any]:
    source = Path(job.input).resolve()
    stat = source.stat() if source.is_file() else None
    manifest = Path(job.artifact) / "seqport.json"
    return {
        "input": str(source),
        "input_size": stat.st_size if stat else None,
        "input_mtime_ns": stat.st_mtime_ns if stat else None,
        "input_format": in_fmt,
        "output_format": out_fmt,
        "artifact_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None,
        "spec": dataclasses.asdict(job.spec),
        "shard_size": job.shard_size,
    }
