"""Resumable output: each finished shard is a file in OUTPUT.parts/, merged in order at the end.

A shard is `shard_size` consecutive input records. Its rows are written to a temporary file
and renamed, so a shard file is either complete or absent; a rerun of the same job skips the
shards already there. `job.json` holds the job's fingerprint (input, artifact, options): a
rerun with different settings is refused instead of mixing two jobs' outputs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seqport.engine.errors import ConfigError


@dataclass(frozen=True)
class ShardInfo:
    """Counts of a finished shard (its sidecar file)."""

    records: int
    tokens: int
    failures: int


class ShardStore:
    """The folder of finished shards of one job.

    Args:
        output: the job's final output file; shards live in OUTPUT.parts/ beside it.
        fingerprint: what identifies the job (input file, artifact, options).
    """

    def __init__(self, output: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = output.with_name(output.name + ".parts")
        self.fingerprint = fingerprint

    def open(self) -> None:
        """Create the folder, or check that the shards in it belong to this job.

        Raises:
            ConfigError: the folder holds shards of a job with other settings.
        """
        meta = self.folder / "job.json"
        if meta.is_file():
            old = json.loads(meta.read_text(encoding="utf-8"))
            if old != self.fingerprint:
                changed = sorted(k for k in {*old, *self.fingerprint} if old.get(k) != self.fingerprint.get(k))
                raise ConfigError(
                    f"{self.folder} holds shards of a job with other settings ({', '.join(changed)} differ); "
                    "rerun with the same settings to resume, or delete that folder to start over"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(meta, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")

    def done(self, shard: int) -> ShardInfo | None:
        """The counts of a finished shard, or None if it still has to run."""
        info = self._path(shard, ".json")
        if not info.is_file() or not self._path(shard, ".jsonl").is_file():
            return None
        return ShardInfo(**json.loads(info.read_text(encoding="utf-8")))

    def write(self, shard: int, rows: list[dict[str, Any]], info: ShardInfo) -> None:
        """Store a finished shard (rows first, then its counts: the counts mark it done)."""
        _write_atomic(self._path(shard, ".jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        _write_atomic(self._path(shard, ".json"), json.dumps(asdict(info)) + "\n")

    def rows(self, shards: int) -> Iterator[dict[str, Any]]:
        """Every row of shards 0..shards-1, in order."""
        for shard in range(shards):
            with self._path(shard, ".jsonl").open(encoding="utf-8") as lines:
                for line in lines:
                    yield json.loads(line)

    def empty(self) -> bool:
        """True when no shard has been stored yet."""
        return not any(self.folder.glob("shard-*.json"))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, shard: int, suffix: str) -> Path:
        return self.folder / f"shard-{shard:06d}{suffix}"


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
