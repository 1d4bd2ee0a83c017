"""Reading job inputs and writing job outputs: text lines, JSONL and Parquet.

Every input record gets an id (its 0-based position in the input) and keeps its fields, so the
output carries them through. A record that cannot be read (a JSONL line that is not an object,
a missing or non-text field) is not fatal: it travels with its `error` and is reported in the
output like a record the model rejected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqport.engine.errors import ArtifactError, ConfigError

FORMATS = ("text", "jsonl", "parquet")
_SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Record:
    """One input record.

    Args:
        id: its 0-based position in the input.
        fields: the record's fields, carried to the output (text input: {field: line}).
        error: why it cannot be processed (None when it can).
    """

    id: int
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "fields": self.fields, "error": self.error}, ensure_ascii=False)

    @staticmethod
    def from_json(line: str) -> Record:
        data = json.loads(line)
        return Record(data["id"], data["fields"], data["error"])


def file_format(path: Path, given: str | None = None) -> str:
    """The format named by `given`, else by the file's suffix (text for an unknown one).

    Raises:
        ConfigError: `given` is not one of FORMATS.
    """
    if given is not None:
        if given not in FORMATS:
            raise ConfigError(f"unknown format {given!r}; supported formats are: {', '.join(FORMATS)}")
        return given
    return _SUFFIXES.get(path.suffix.lower(), "text")


def read_records(path: Path, fmt: str, text_field: str, id_field: str) -> Iterator[Record]:
    """Records of `path` in input order, read lazily.

    Args:
        path: the input file.
        fmt: "text" (one record per line), "jsonl" (one object per line) or "parquet".
        text_field: the field holding the text (text input: the field the line is stored in).
        id_field: the output's id field; an input field of that name is refused.

    Raises:
        ArtifactError: the input file does not exist.
        ConfigError: Parquet without pyarrow, or records that hold `id_field` already.
    """
    if not path.is_file():
        raise ArtifactError(f"input file {path} does not exist; pass an existing --input file")
    if fmt == "text":
        yield from _text_records(path, text_field)
    elif fmt == "jsonl":
        yield from _jsonl_records(path, text_field, id_field)
    else:
        yield from _parquet_records(path, text_field, id_field)


def _text_records(path: Path, text_field: str) -> Iterator[Record]:
    with path.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            yield Record(index, {text_field: line.rstrip("\r\n")})


def _jsonl_records(path: Path, text_field: str, id_field: str) -> Iterator[Record]:
    with path.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Record(index, {}, f"line {index + 1} is not valid JSON: {exc}")
                continue
            if not isinstance(fields, dict):
                yield Record(index, {}, f"line {index + 1} is not a JSON object")
                continue
            yield _checked(index, fields, text_field, id_field)


def _parquet_records(path: Path, text_field: str, id_field: str) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet files need pyarrow: pip install pyarrow (or 'seqport[ray]')") from None
    index = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for fields in batch.to_pylist():
            yield _checked(index, fields, text_field, id_field)
            index += 1


def _checked(index: int, fields: dict[str, Any], text_field: str, id_field: str) -> Record:
    if id_field in fields:
        raise ConfigError(
            f"input records already have a field {id_field!r}; pass another --id-field for the output's record ids"
        )
    if not isinstance(fields.get(text_field), str):
        found = "missing" if text_field not in fields else f"a {type(fields[text_field]).__name__}"
        return Record(index, fields, f"field {text_field!r} must be text, but it is {found} (--field names it)")
    return Record(index, fields)


def write_output(path: Path, fmt: str, rows: Iterator[dict[str, Any]], output_field: str) -> int:
    """Write output rows (already in order) to `path`; returns how many were written.

    Text output is one line per record: its `output_field` (a failed record: an empty line;
    an embedding: its numbers separated by spaces).

    Raises:
        ConfigError: Parquet without pyarrow.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    if fmt == "parquet":
        count = _write_parquet(partial, rows)
    else:
        count = 0
        with partial.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(_text_line(row, output_field) if fmt == "text" else json.dumps(row, ensure_ascii=False))
                out.write("\n")
                count += 1
    partial.replace(path)  # readers never see a half-written output
    return count


def _text_line(row: dict[str, Any], output_field: str) -> str:
    value = row.get(output_field, "")
    if isinstance(value, list):
        return " ".join(repr(float(x)) for x in value)
    return str(value).replace("\n", " ")


def _write_parquet(path: Path, rows: Iterator[dict[str, Any]]) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet files need pyarrow: pip install pyarrow (or 'seqport[ray]')") from None
    rows = list(rows)
    keys = dict.fromkeys(key for row in rows for key in row)  # a failed row lacks the output field
    table = pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])
    pq.write_table(table, path)
    return table.num_rows


def count_records(path: Path, fmt: str) -> int:
    """How many records `path` holds (lines, or Parquet rows from its metadata)."""
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return 0
        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as data:
        return sum(1 for _ in data)
