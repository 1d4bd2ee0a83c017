"""The default runner: every shard in this process with one loaded engine (no Ray)."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from seqport.batch.records import Record
from seqport.batch.shards import ShardInfo, ShardStore
from seqport.batch.work import process_records
from seqport.engine.api import load
from seqport.engine.runtime import RuntimeOptions

if TYPE_CHECKING:
    from seqport.batch.job_types import BatchJob, Progress


def run_local(
    job: BatchJob, todo: list[tuple[int, list[Record]]], store: ShardStore, progress: Progress | None
) -> list[ShardInfo]:
    """Process the unfinished shards `todo` in order, storing each as it finishes."""
    if not todo:
        return []
    model = load(job.artifact, provider=job.provider, options=RuntimeOptions(intra_op_threads=job.threads))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    infos = []
    for index, records in todo:
        result = process_records(model, job.spec, records, worker)
        info = ShardInfo(len(result.rows), result.tokens, result.failures)
        store.write(index, result.rows, info)
        infos.append(info)
        if progress is not None:
            progress(info.records, info.tokens)
    return infos
