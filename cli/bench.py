"""`seqport bench`: measure an artifact per runtime and batch size, print a table.

The measuring lives in seqport.cli.bench_runner (one fresh worker process per run) and the
table, records and plot in seqport.cli.bench_report; this module is the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from seqport.engine.errors import SeqportError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the bench subcommand to `sub`."""
    p = sub.add_parser(
        "bench",
        help="measure load time, time to first token, step latency, tokens/s and peak RSS",
        description="Generate exactly --new-tokens tokens per input for synthetic inputs of "
        "--input-length ids, per runtime and batch size, each in a fresh process (so peak RSS is "
        "its own): --warmup runs, then --repeats measured runs; prints median/p90 per figure. "
        "See docs/benchmarks.md.",
    )
    p.add_argument("artifact", help="artifact folder written by `seqport export`")
    p.add_argument("--runtimes", default="onnxruntime", help="comma-separated backends (default: onnxruntime)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1], help="comma-separated batch sizes (default: 1)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per input, exactly (default 64)")
    p.add_argument("--input-length", type=int, default=32, help="ids per synthetic input (default 32)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured runs first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="measured runs (default 5)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the backend decides)")
    p.add_argument("--provider", default="cpu", help="execution provider or device (see `seqport info`)")
    p.add_argument("--json", metavar="FILE", help="write one JSON record per run (JSON Lines)")
    p.add_argument("--plot", metavar="FILE.png", help="plot tokens/s and step latency (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_bench)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _progress(record: dict) -> None:
    print(f"measured {record['runtime']} batch {record['batch']}", file=sys.stderr)


def _bench(args: argparse.Namespace) -> int:
    from seqport.cli.bench_report import format_table, write_plot
    from seqport.cli.bench_runner import run_benchmarks

    if args.plot and importlib.util.find_spec("matplotlib") is None:  # say so before minutes of measuring
        raise SeqportError("--plot needs matplotlib: pip install matplotlib (or drop --plot)")
    runtimes = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    records = run_benchmarks(
        args.artifact,
        runtimes,
        args.batch_sizes,
        on_record=None if args.quiet else _progress,
        provider=args.provider,
        new_tokens=args.new_tokens,
        input_length=args.input_length,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
    )
    print(format_table(records))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, sort_keys=True) + "\n" for record in records)
    if args.plot:
        write_plot(records, args.plot)
    return 0
