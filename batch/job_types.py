"""What a batch job is: its options and its summary (plain data the runners share).

A leaf module, so job.py (which picks a runner) and the runners (local.py, on_ray.py) both
import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seqport.batch.work import JobSpec

Progress = Callable[[int, int], None]  # (records just finished, tokens just generated)


@dataclass(frozen=True)
class RayOptions:
    """How a job runs on Ray.

    Args:
        address: passed to ray.init(): "auto", "HOST:PORT", "ray://HOST:PORT"; "" starts or
            joins the local Ray the way ray.init() does by default.
        workers: actors in the pool (0: the cluster's CPUs // cpus_per_worker).
        cpus_per_worker: CPUs each actor reserves; its onnxruntime intra-op threads.
        ship_artifact: send the artifact's files through the object store (for small
            artifacts; otherwise every node must see the artifact path, e.g. shared storage).
    """

    address: str = ""
    workers: int = 0
    cpus_per_worker: float = 1.0
    ship_artifact: bool = False


@dataclass(frozen=True)
class BatchJob:
    """One offline job.

    Args:
        artifact: the artifact folder.
        input, output: files; their formats come from their suffixes unless given.
        spec: what to do to each record.
        input_format, output_format: "text", "jsonl" or "parquet" (None: from the suffix).
        shard_size: records per shard (the unit of resuming and of Ray work).
        provider, threads: the local engine's execution provider and intra-op threads (0: auto).
        ray: run on Ray with these options (None: in this process).
        overwrite: replace an existing output file.
    """

    artifact: str | Path
    input: str | Path
    output: str | Path
    spec: JobSpec = field(default_factory=JobSpec)
    input_format: str | None = None
    output_format: str | None = None
    shard_size: int = 1000
    provider: str = "cpu"
    threads: int = 0
    ray: RayOptions | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class JobSummary:
    """What a job did: records written, shards skipped (already done), tokens and failures."""

    records: int
    processed: int
    skipped_shards: int
    tokens: int
    failures: int
    seconds: float
    output: Path

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def records_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0
