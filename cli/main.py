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
from seqport.cli import artifact, bench, chat, demo, encode, generate
from seqport.engine.errors import SeqportError
from seqport.serving import cli as serve

#: each adds its subcommands, in the order `seqport --help` lists them
ADD_PARSERS = (
    artifact.add_export_parser,
    generate.add_generate_parser,
    chat.add_parser,
    demo.add_parsers,
    bench.add_parsers,
    artifact.add_info_parser,
    encode.add_parsers,
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
    parser.add_argument("--version", action="version", version=f"seqport {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in ADD_PARSERS:
        add(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seqport")
    except PackageNotFoundError:
        return "(not installed)"


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, with options allowed between a command's texts: `generate ART --max-new-tokens 5
    "Hello"` leaves "Hello" unparsed once the empty `text` list was taken, so the texts left over
    join `text` in order (argparse's parse_intermixed_args does not work with subcommands)."""
    args, extras = parser.parse_known_args(argv)
    texts = getattr(args, "text", None)
    if extras and isinstance(texts, list) and not any(e.startswith("-") and e != "-" for e in extras):
        texts.extend(extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (1: a seqport error, printed on one line)."""
    parser = build_parser()
    args = parse(parser, argv)
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
