"""What a job does to its records: one function shared by the local run and the Ray actors.

Both paths call `process_records` on the same shards with the same chunking, so a job gives
the same output record for record whichever runs it. A record the model rejects (empty, too
long, unreadable) gets an `error` field instead of an output; the rest of its chunk is redone
record by record so one bad record never takes its neighbours down.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from seqport.batch.records import Record
from seqport.engine.errors import ConfigError, SeqportError

TASKS = ("generate", "translate", "embed")
_DEFAULT_TASK = {"encoder-decoder": "translate", "decoder-only": "generate", "encoder-only": "embed"}


@dataclass(frozen=True)
class JobSpec:
    """What to do to each record.

    Args:
        task: "generate", "translate" or "embed"; None: the artifact's kind decides
            (encoder-decoder → translate, decoder-only → generate, encoder-only → embed).
        text_field: the input field holding the text.
        id_field: the output field holding the record's 0-based input position.
        output_field: the output field for the result (default "output", "embedding" for embed).
        generation: GenerationConfig overrides (max_new_tokens, num_beams, ...).
        chunk_size: records per engine call.
        truncate: cut over-long inputs instead of reporting them as failed.
        worker_field: when set, each output row names the worker that made it in this field
            ("node id:pid"; a debugging aid, off by default).
    """

    task: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    output_field: str | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 32
    truncate: bool = False
    worker_field: str | None = None

    def resolved(self, architecture: str) -> JobSpec:
        """This spec with its task and output field filled in for an artifact kind.

        Raises:
            ConfigError: an unknown task, or one the artifact cannot do.
        """
        task = self.task or _DEFAULT_TASK.get(architecture, "generate")
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; supported tasks are: {', '.join(TASKS)}")
        if (task == "embed") != (architecture == "encoder-only") or (
            task == "translate" and architecture != "encoder-decoder"
        ):
            raise ConfigError(
                f"a {architecture} artifact cannot {task}; its task is {_DEFAULT_TASK.get(architecture)!r} "
                "(leave --task out to use it)"
            )
        output = self.output_field or ("embedding" if task == "embed" else "output")
        return dataclasses.replace(self, task=task, output_field=output)


@dataclass
class ShardResult:
    """The output rows of one shard, in input order, and its counts."""

    rows: list[dict[str, Any]]
    tokens: int = 0
    failures: int = 0


def process_records(model: Any, spec: JobSpec, records: Sequence[Record], worker: str = "") -> ShardResult:
    """Run the job's task on `records` (a resolved spec); returns one output row per record.

    Args:
        model: a loaded seqport model.
        spec: the job, `resolved()` for this model.
        records: input records, in order.
        worker: the name written to `spec.worker_field` when that is set.
    """
    result = ShardResult([])
    for start in range(0, len(records), spec.chunk_size):
        chunk = records[start : start + spec.chunk_size]
        good = [r for r in chunk if r.error is None]
        outputs = dict(zip((r.id for r in good), _run_chunk(model, spec, good)))
        for record in chunk:
            row = {spec.id_field: record.id, **record.fields}
            value, tokens, error = outputs.get(record.id, (None, 0, record.error))
            if error is None:
                row[spec.output_field] = value
            else:
                row["error"] = error
                result.failures += 1
            if spec.worker_field:
                row[spec.worker_field] = worker
            result.tokens += tokens
            result.rows.append(row)
    return result


def _run_chunk(model: Any, spec: JobSpec, records: list[Record]) -> list[tuple[Any, int, str | None]]:
    """(value, tokens, error) per record: the whole chunk at once, else record by record."""
    if not records:
        return []
    try:
        return _run(model, spec, [r.fields[spec.text_field] for r in records])
    except SeqportError as exc:  # a record's own problem (empty, too long, bad ids): find which
        if len(records) == 1:
            return [(None, 0, f"{type(exc).__name__}: {exc}")]
    return [outcome for record in records for outcome in _run_chunk(model, spec, [record])]


def _run(model: Any, spec: JobSpec, texts: list[str]) -> list[tuple[Any, int, str | None]]:
    if spec.task == "embed":
        vectors = model.embed(texts, batch_size=0, truncate=spec.truncate)
        counts = [len(ids) for ids in model.input_ids(texts)]
        return [(v.tolist(), n, None) for v, n in zip(vectors, counts)]
    overrides = {"truncate": spec.truncate, "batch_size": 0, **spec.generation}
    results = model.generate(texts, **overrides)
    return [(r.text, len(r.ids), None) for r in results]
