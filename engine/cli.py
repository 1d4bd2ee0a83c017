"""The `seqport` command line.

Subcommands that need torch (`export`) are defined here but import the export package only
when they run, by name: the CLI is the one front door for both halves, and a runtime-only
install must still start, answer --help and run `generate` and `info` without torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence

from seqport.engine.errors import SeqportError

EXPORT_HINT = "`seqport export` needs the export extra: pip install 'seqport[export]'"


def _export(args: argparse.Namespace) -> int:
    try:
        pipeline = importlib.import_module("seqport.export.pipeline")
    except ImportError as exc:
        raise SeqportError(f"{EXPORT_HINT} ({exc.name} is missing)") from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # exporter chatter about torchvision
    manifest = pipeline.export_model(args.source, args.out, family=args.family, progress=not args.quiet)
    print(f"exported {manifest.family} to {args.out}")
    _print_validation(manifest)
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module("seqport.export.demo")
    except ImportError as exc:
        raise SeqportError(
            f"`seqport demo` needs torch: pip install 'seqport[export]' ({exc.name} is missing)"
        ) from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    return demo.run_demo(args.text, provider=args.provider, max_new_tokens=args.max_new_tokens, progress=not args.quiet)


def _print_validation(manifest) -> None:
    v = manifest.validation
    print(f"validation against PyTorch ({len(v.cases)} cases), max abs diff:")
    for component, outputs in sorted(v.max_abs_diff.items()):
        figures = ", ".join(f"{name} {diff:.2e}" for name, diff in sorted(outputs.items()))
        print(f"  {component}: {figures}")
    print(f"  tolerance: {', '.join(f'{k} {t:g}' for k, t in sorted(v.tolerance.items()))}")


def _generate(args: argparse.Namespace) -> int:
    from seqport.engine.api import load
    from seqport.engine.runtime import RuntimeOptions

    model = load(args.artifact, provider=args.provider, options=RuntimeOptions(intra_op_threads=args.threads))
    if args.ids:
        inputs = [[int(tok) for tok in row.replace(",", " ").split()] for row in args.ids]
    elif args.text:
        inputs = args.text
    elif not sys.stdin.isatty():
        inputs = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    else:
        raise SeqportError("nothing to generate from: pass TEXT arguments, --ids, or lines on stdin")
    overrides = {
        "max_new_tokens": args.max_new_tokens,
        "truncate": args.truncate,
        "batch_size": args.batch_size,
    }
    results = model.generate(inputs, **{k: v for k, v in overrides.items() if v is not None})
    for result in results:
        if args.json:
            record = {
                "text": result.text,
                "ids": result.ids,
                "score": result.score,
                "finish_reason": result.finish_reason,
            }
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(result.text)
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.artifact:
        from seqport.engine.manifest import load_manifest

        m = load_manifest(args.artifact)
        print(f"artifact: {args.artifact}")
        print(f"  {m.architecture} · family {m.family} · format_version {m.format_version}")
        print(f"  vocab {m.vocab_size} · max positions {m.max_positions}")
        if m.kv:
            print(
                f"  decoder: {m.kv.num_layers} layers · {m.kv.num_heads} heads "
                f"({m.kv.num_kv_heads} kv) · head_dim {m.kv.head_dim} · {m.kv.dtype}"
            )
        for name, c in sorted(m.components.items()):
            print(f"  component {name}: {c.file} (sha256 {c.sha256[:12]}…)")
        p = m.provenance
        print(f"  exported by {p.exporter} · torch {p.torch} · onnx {p.onnx} · opset {p.opset}")
        _print_validation(m)
    try:
        from seqport.runtimes.onnxruntime import available_providers, ort
    except ImportError:
        print("runtimes: onnxruntime is not installed (pip install 'seqport[cpu]' or '[gpu]')")
    else:
        print(f"runtime onnxruntime {ort.__version__}: providers {', '.join(available_providers())}")
    torch_ok = importlib.util.find_spec("torch") is not None
    print(f"runtime torch (reference): {'installed' if torch_ok else 'not installed'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqport",
        description="Export PyTorch transformers to validated ONNX artifacts and run them torch-free with onnxruntime.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "export",
        help="export a checkpoint folder to a validated artifact",
        description="Split a PyTorch checkpoint into encoder and decoder-step "
        "ONNX graphs, validate each against PyTorch (fp32 tolerance 1e-4) and "
        "write seqport.json. Fails (exit 1) if validation fails. " + EXPORT_HINT,
    )
    p.add_argument("source", help="checkpoint folder: config.json, weights, tokenizer.json")
    p.add_argument("out", help="artifact folder to write (created if needed)")
    p.add_argument("--family", help="adapter to use instead of config.json's model_type")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_export)

    p = sub.add_parser(
        "generate",
        help="generate text with an exported artifact",
        description="Generate for each TEXT (or each --ids list, or each line on "
        "stdin) with greedy decoding; prints one output per input, in order.",
    )
    p.add_argument("artifact", help="artifact folder written by `seqport export`")
    p.add_argument("text", nargs="*", help="input texts")
    p.add_argument(
        "--ids",
        action="append",
        metavar='"5 17 42"',
        help="an input as token ids (repeat for several); used instead of TEXT",
    )
    p.add_argument("--max-new-tokens", type=int, help="most tokens per output (default: manifest)")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut inputs longer than the model's maximum instead of failing",
    )
    p.add_argument("--batch-size", type=int, help="inputs per batch (default: all at once)")
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime decides)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per input: text, ids (generated, no prompt), score",
    )
    p.set_defaults(run=_generate)

    p = sub.add_parser(
        "demo",
        help="export the bundled translator and translate with it (the first thing to run)",
        description="Export the bundled English→French translator (validated against PyTorch; "
        "cached in $SEQPORT_CACHE or ~/.cache/seqport and reused), translate a few sentences "
        "(or TEXT) with the torch-free engine, and print the engine's tokens/s beside PyTorch "
        "eager on the same inputs.",
    )
    p.add_argument("text", nargs="*", help="English sentences to translate (default: a handful)")
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per translation")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_demo)

    p = sub.add_parser(
        "info",
        help="describe an artifact and the available providers",
        description="Print an artifact's manifest summary and parity figures, "
        "and the runtimes and execution providers this installation can use.",
    )
    p.add_argument("artifact", nargs="?", help="artifact folder (optional)")
    p.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
