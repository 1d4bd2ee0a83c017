"""`seqport batch --ray`: the same shards, processed by a Ray Data actor pool.

Each dataset row is one shard (its records with their ids). `map_batches` sends shards to a
fixed pool of actors (`ActorPoolStrategy(size=n)`); each actor loads the artifact once, with
onnxruntime's intra-op threads set to the CPUs it reserved, and runs the very function the
local path runs (`process_records`), so the output equals the local run's record for record.
Finished shards stream back to the driver, which stores each at once: an interrupted job
resumes from the shards already stored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqport.batch.records import Record
from seqport.batch.shards import ShardInfo, ShardStore
from seqport.batch.shipping import ArtifactSource, materialized, ship
from seqport.batch.work import JobSpec, process_records
from seqport.engine.errors import ConfigError, RuntimeFailure

if TYPE_CHECKING:
    from seqport.batch.job_types import BatchJob, Progress, RayOptions

logger = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ray module.

    Raises:
        ConfigError: Ray is not installed (names the extra to install).
    """
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra)
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray with its data and serve parts ({exc.name} is missing): pip install 'seqport[ray]' "
            "(that is 'ray[serve,data]' and pyarrow); or leave --ray out to run in this process"
        ) from None
    return ray


class ShardWorker:
    """A pool actor: loads the artifact once, then turns shard rows into output rows."""

    def __init__(self, source: list[ArtifactSource], spec: dict[str, Any], provider: str) -> None:
        import ray

        from seqport.engine.api import load
        from seqport.engine.runtime import RuntimeOptions

        context = ray.get_runtime_context()
        threads = max(1, int(context.get_assigned_resources().get("CPU", 1)))
        with materialized(source[0]) as folder:
            self.model = load(folder, provider=provider, options=RuntimeOptions(intra_op_threads=threads), verify=True)
        self.spec = JobSpec(**spec)
        self.worker = f"{context.get_node_id()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "rows": [], "tokens": [], "failures": [], "worker": []}
        for shard, text in zip(batch["shard"], batch["records"]):
            records = [Record.from_json(line) for line in str(text).splitlines()]
            result = process_records(self.model, self.spec, records, self.worker)
            out["shard"].append(int(shard))
            out["rows"].append(json.dumps(result.rows, ensure_ascii=False))
            out["tokens"].append(result.tokens)
            out["failures"].append(result.failures)
            out["worker"].append(self.worker)
        return out


def run_on_ray(
    job: BatchJob, todo: list[tuple[int, list[Record]]], store: ShardStore, progress: Progress | None
) -> list[ShardInfo]:
    """Process the unfinished shards `todo` on a Ray actor pool, storing each as it arrives.

    Raises:
        ConfigError: Ray is not installed, or the artifact is too big to ship.
        RuntimeFailure: the Ray job failed (an actor could not load the artifact, a node died).
    """
    ray = import_ray()
    if not todo:
        return []
    options = job.ray
    assert options is not None  # run_job only calls this for Ray jobs
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address or None, log_to_driver=False, logging_level=logging.WARNING)
    try:
        return _run(ray, job, options, todo, store, progress)
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    job: BatchJob,
    options: RayOptions,
    todo: list[tuple[int, list[Record]]],
    store: ShardStore,
    progress: Progress | None,
) -> list[ShardInfo]:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws one bar for the whole job
    context.execution_options.preserve_order = False  # shards are stored by index as they finish
    folder = Path(job.artifact).resolve()
    source = ship(folder) if options.ship_artifact else ArtifactSource(str(folder))
    rows = [{"shard": index, "records": "\n".join(r.to_json() for r in records)} for index, records in todo]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardWorker,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=_pool_size(ray, options, len(todo))),
        num_cpus=options.cpus_per_worker,
        fn_constructor_kwargs={"source": [source], "spec": dataclasses.asdict(job.spec), "provider": job.provider},
    )
    infos = []
    try:
        for row in dataset.iter_rows():
            shard_rows = json.loads(row["rows"])
            info = ShardInfo(len(shard_rows), int(row["tokens"]), int(row["failures"]))
            store.write(int(row["shard"]), shard_rows, info)
            infos.append(info)
            if progress is not None:
                progress(info.records, info.tokens)
    except ray.exceptions.RayError as exc:
        raise RuntimeFailure(
            f"the Ray job failed: {exc}\nIf an actor could not find the artifact, put it on storage every node "
            "sees (same path) or pass --ship-artifact; finished shards are kept, rerun to resume"
        ) from None
    return infos


def _pool_size(ray: Any, options: RayOptions, shards: int) -> int:
    if options.workers:
        return min(options.workers, shards)
    cpus = ray.cluster_resources().get("CPU", 1)
    size = int(cpus // options.cpus_per_worker)
    if size < 1:
        raise ConfigError(
            f"the cluster has {cpus:g} CPUs, fewer than one worker's --cpus-per-worker {options.cpus_per_worker:g}"
        )
    return min(size, shards)
