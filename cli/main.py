"""The `seqport` command line: the parser, built from one module per subcommand group, and main().

Each group module (generate, artifact, bench, demo; `serve` and `batch` come from seqport.serving
and seqport.batch) adds its own subparsers and imports what its command needs when it runs: a
runtime-only install starts, answers --help and runs `generate`, `embed`, `classify`, `info`,
`bench`, `serve` and `batch` without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from seqport.batch import cli as batch
from seqport.cli import artifact, bench, demo, generate
from seqport.engine.errors import SeqportError
from seqport.serving import cli as serve

#: each adds its subcommands, in the order `seqport --help` lists them
ADD_PARSERS = (
    artifact.add_export_parser,
    generate.add_generate_parser,
    demo.add_parsers,
    bench.add_parsers,
    artifact.add_info_parser,
    generate.add_encoder_parsers,
    serve.add_parser,
    batch.add_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The `seqport` parser; each subcommand's `run` default is the function that executes it."""
    parser = argparse.ArgumentParser(
        prog="seqport",
        description="Export PyTorch transformers to validated ONNX artifacts and run them torch-free with onnxruntime.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in ADD_PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (1: a seqport error, printed on one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="seqport: %(levelname)s: %(message)s"
    )
    try:
        return args.run(args)
    except SeqportError as exc:
        print(f"seqport: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seqport: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
