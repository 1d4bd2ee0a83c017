"""Offline jobs over files: `seqport batch` (in this process, or on Ray with `--ray`).

    from seqport.batch import BatchJob, JobSpec, run_job
    spec = JobSpec(generation={"max_new_tokens": 32})
    summary = run_job(BatchJob("artifacts/translator", "in.txt", "out.jsonl", spec))

Nothing here imports torch, and Ray is imported only for Ray jobs (the `ray` extra).
"""

from seqport.batch.job import run_job
from seqport.batch.job_types import BatchJob, JobSummary, RayOptions
from seqport.batch.work import JobSpec

__all__ = ["BatchJob", "JobSpec", "JobSummary", "RayOptions", "run_job"]
