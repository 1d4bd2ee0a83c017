"""Inputs and outputs of the run commands (generate, embed, classify): one output per input line.

Inputs come from TEXT arguments, `--input FILE` or stdin, one per line; blank lines are inputs
too (they get an empty output), so output line N always answers input line N. Generated text
may hold newlines: `--jsonl` reads one JSON object per line ({"text": ...} or {"ids": [...]})
and writes one JSON object per input, which keeps the alignment whatever the text holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from seqport.engine.errors import InputError, SeqportError


def add_io_options(p: argparse.ArgumentParser, ids: bool = False) -> None:
    """--input, --output, --jsonl and --progress for a run command."""
    shape = '{"text": ...} or {"ids": [...]}' if ids else '{"text": ...}'
    p.add_argument("--input", metavar="FILE", help="read inputs from FILE, one per line (default: TEXT or stdin)")
    p.add_argument("--output", metavar="FILE", help="write outputs to FILE instead of stdout")
    p.add_argument(
        "--jsonl",
        action="store_true",
        help=f"inputs are JSON lines ({shape}) and each output is one JSON object, in input order",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (needs tqdm; default: when stderr is a terminal)",
    )


def read_lines(stream: IO[bytes], name: str) -> list[str]:
    """Every line of `stream` (blank ones included), decoded as UTF-8 with a clear error for other bytes.

    Raises:
        InputError: a line is not valid UTF-8 (names the line and the byte).
    """
    lines = []
    for number, raw in enumerate(stream, 1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as exc:
            raise InputError(
                f"line {number} of {name} is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                "convert it first, e.g. iconv -f latin1 -t utf-8"
            ) from None
    return lines


def input_lines(args: argparse.Namespace, verb: str) -> list[str]:
    """The lines of --input FILE, else of stdin (not a terminal).

    Raises:
        SeqportError: no input at all; InputError: a file that cannot be read or decoded.
    """
    if args.input is not None:
        try:
            with open(args.input, "rb") as handle:
                return read_lines(handle, args.input)
        except OSError as exc:
            raise InputError(f"cannot read --input {args.input}: {exc.strerror}") from None
    if not sys.stdin.isatty():
        return read_lines(sys.stdin.buffer, "stdin")
    raise SeqportError(f"nothing to {verb}: pass TEXT arguments, --input FILE, or lines on stdin")


def parse_jsonl(lines: list[str], ids: bool = False) -> list[str | list[int]]:
    """JSON lines → each object's "text" (or, with `ids`, "ids"); blank lines are skipped.

    Raises:
        InputError: a line that is not such an object (names the line and what it needs).
    """
    keys = '"text" (a string) or "ids" (a list of token ids)' if ids else '"text" (a string)'
    inputs: list[str | list[int]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"--jsonl line {number} is not JSON ({exc.msg}); each line needs an object") from None
        value = record.get("text") if isinstance(record, dict) else None
        if isinstance(value, str):
            inputs.append(value)
        elif ids and isinstance(record, dict) and _is_id_list(record.get("ids")):
            inputs.append(list(record["ids"]))
        else:
            raise InputError(f"--jsonl line {number}: each object needs {keys}, got {line[:80]!r}")
    return inputs


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


@contextlib.contextmanager
def output_stream(args: argparse.Namespace) -> Iterator[IO[str]]:
    """--output FILE (written as UTF-8), else stdout."""
    if args.output is None:
        yield sys.stdout
        return
    try:
        handle = open(args.output, "w", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write --output {args.output}: {exc.strerror}") from None
    with handle:
        yield handle


def progress_bar(args: argparse.Namespace, total: int, unit: str) -> Any:
    """A tqdm bar on stderr when asked (--progress), or by default when stderr is a terminal and
    tqdm is installed; None otherwise."""
    wanted = args.progress if args.progress is not None else sys.stderr.isatty()
    if not wanted:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False, mininterval=0)  # one update per chunk


def chunks(items: list, size: int) -> Iterable[tuple[int, list]]:
    """(offset, slice) of `items` in slices of `size` (one slice with size 0)."""
    size = size if size > 0 else max(len(items), 1)
    for start in range(0, len(items), size):
        yield start, items[start : start + size]
