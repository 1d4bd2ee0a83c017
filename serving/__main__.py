"""`python -m seqport.serving [ARTIFACT] --host --port ...`: the same as `seqport serve`."""

import argparse
import sys

from seqport.serving.cli import add_parser, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqport.serving")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
