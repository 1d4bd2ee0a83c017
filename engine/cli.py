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
    # onnxruntime's optimizer imports its modules top-level: symbolic-dim chatter of its shape inference
    logging.getLogger("symbolic_shape_infer").setLevel(logging.ERROR)
    manifest = pipeline.export_model(
        args.source,
        args.out,
        family=args.family,
        progress=not args.quiet,
        task=args.task,
        optimize=args.optimize,
        quantize=args.quantize,
        dtype=args.dtype,
        kv_cache=args.kv_cache,
    )
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
    _print_post_export(manifest)


def _print_post_export(manifest) -> None:
    """The --optimize and --quantize sections of a manifest, when present."""
    o = getattr(manifest, "optimization", None)
    if o is not None:
        for component, fused in sorted(o.fusions.items()):
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(fused.items())) or "no pattern matched"
            print(f"optimized {component} ({o.tool}, {o.model_type} patterns): {ops}")
        worst = max((d for t in o.validation.max_abs_diff.values() for d in t.values()), default=0.0)
        print(f"  re-validated against PyTorch ({len(o.validation.cases)} cases): max abs diff {worst:.2e}")
    q = getattr(manifest, "quantization", None)
    if q is not None:
        scales = "per-channel" if q.per_channel else "per-tensor"
        print(f"quantized {q.method} ({scales}, {', '.join(q.op_types)}): {q.inputs}")
        print(
            f"  greedy token agreement with fp32 {q.token_agreement:.3f} (gate {q.min_agreement:g}), "
            f"identical outputs {q.sequence_match:.2f}"
        )
        for component, outputs in sorted(q.max_abs_diff.items()):
            figures = ", ".join(f"{name} {diff:.2e}" for name, diff in sorted(outputs.items()))
            print(f"  {component} max abs diff vs fp32 (information): {figures}")


def _generate(args: argparse.Namespace) -> int:
    from seqport.engine.api import load
    from seqport.engine.runtime import RuntimeOptions

    if args.stream and args.json:
        raise SeqportError("--stream prints text as it arrives and cannot be combined with --json")
    inputs = _generation_inputs(args)
    model = load(args.artifact, provider=args.provider, options=RuntimeOptions(intra_op_threads=args.threads))
    overrides = _generation_overrides(args, model)
    if args.stream:
        for index, item in enumerate(inputs):  # one at a time, each line printed as it grows
            seed = {"seed": overrides["seed"] + index} if "seed" in overrides else {}  # as a batch would
            for piece in model.stream([item], **{**overrides, **seed}):
                print(piece.text, end="", flush=True)
            print()
        return 0
    for result in model.generate(inputs, **overrides):
        if not args.json:
            print(result.text)
            continue
        record = _sequence_record(result.sequences[0])
        if len(result.sequences) > 1:
            record["sequences"] = [_sequence_record(s) for s in result.sequences]
        print(json.dumps(record, ensure_ascii=False))
    return 0


def _generation_inputs(args: argparse.Namespace) -> list:
    if args.ids:
        return args.ids
    if args.text:
        return args.text
    if not sys.stdin.isatty():
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    raise SeqportError("nothing to generate from: pass TEXT arguments, --ids, or lines on stdin")


def _generation_overrides(args: argparse.Namespace, model) -> dict:
    """GenerationConfig overrides from the flags given (the manifest's defaults stay otherwise)."""
    overrides = {dest: getattr(args, dest) for _, dest, _ in _GENERATION_FLAGS if getattr(args, dest) is not None}
    if "early_stopping" in overrides:
        overrides["early_stopping"] = {"true": True, "false": False}.get(overrides["early_stopping"], "never")
    if args.prefix is not None:
        overrides["prefix_ids"] = model.tokenizer.encode_plain(args.prefix)
    return overrides


def _sequence_record(sequence) -> dict:
    keys = ("text", "ids", "score", "finish_reason")
    return {key: getattr(sequence, key) for key in keys}


def _id_list(text: str) -> list[int]:
    """ "5 17 42" or "5,17,42" → [5, 17, 42]."""
    try:
        return [int(token) for token in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like '5 17 42', got {text!r}") from None


#: `seqport generate` flags that set a GenerationConfig option: (flag, option, argparse keywords)
_GENERATION_FLAGS = [
    ("--max-new-tokens", "max_new_tokens", dict(type=int, help="most tokens per output, EOS included")),
    ("--min-new-tokens", "min_new_tokens", dict(type=int, help="EOS is forbidden before this many tokens")),
    ("--do-sample", "do_sample", dict(action=argparse.BooleanOptionalAction, help="sample (--no-do-sample: search)")),
    ("--temperature", "temperature", dict(type=float, help="sampling: logits / T (< 1 sharper, > 1 flatter)")),
    ("--top-k", "top_k", dict(type=int, help="sampling: keep the K most likely tokens (0: all)")),
    ("--top-p", "top_p", dict(type=float, help="sampling: keep the most likely tokens up to mass P")),
    ("--min-p", "min_p", dict(type=float, help="sampling: drop tokens below P x the top token's probability")),
    ("--seed", "seed", dict(type=int, help="sampling seed; input i uses seed + i, so runs repeat exactly")),
    ("--num-beams", "num_beams", dict(type=int, help="beam search width (1: greedy search or sampling)")),
    ("--length-penalty", "length_penalty", dict(type=float, help="beam score = sum log p / length ** L")),
    (
        "--early-stopping",
        "early_stopping",
        dict(choices=["true", "false", "never"], help="when beam search stops, as in transformers"),
    ),
    ("--num-return-sequences", "num_return_sequences", dict(type=int, help="outputs per input (see --json)")),
    ("--repetition-penalty", "repetition_penalty", dict(type=float, help="> 1 discourages repeated tokens")),
    ("--no-repeat-ngram-size", "no_repeat_ngram_size", dict(type=int, help="never repeat an n-gram of this size")),
    ("--suppress-tokens", "suppress_tokens", dict(type=_id_list, metavar="IDS", help="ids never generated")),
    (
        "--bad-words",
        "bad_words_ids",
        dict(type=_id_list, action="append", metavar="IDS", help="an id sequence never generated (repeatable)"),
    ),
    ("--forced-bos-token-id", "forced_bos_token_id", dict(type=int, help="force the first generated token")),
    ("--prefix-ids", "prefix_ids", dict(type=_id_list, metavar="IDS", help="forced target prefix, as ids")),
    ("--eos-token-ids", "eos_token_ids", dict(type=_id_list, metavar="IDS", help="ids that end an output")),
    (
        "--stop",
        "stop",
        dict(action="append", metavar="TEXT", help="end an output at TEXT, which is cut off (repeatable)"),
    ),
    (
        "--truncate",
        "truncate",
        dict(action="store_true", default=None, help="cut over-long inputs instead of failing"),
    ),
    ("--batch-size", "batch_size", dict(type=int, help="inputs per batch (default: all at once)")),
]


def _texts(args: argparse.Namespace, verb: str) -> list[str]:
    if args.text:
        return args.text
    if not sys.stdin.isatty():
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    raise SeqportError(f"nothing to {verb}: pass TEXT arguments or lines on stdin")


def _encoder_model(args: argparse.Namespace, verb: str):
    from seqport.engine.api import load
    from seqport.engine.runtime import RuntimeOptions

    model = load(args.artifact, provider=args.provider, options=RuntimeOptions(intra_op_threads=args.threads))
    if not hasattr(model, verb):
        kind = model.manifest.architecture
        raise SeqportError(f"{args.artifact} is a {kind} artifact; `seqport {verb}` needs an encoder-only one")
    return model


def _embed(args: argparse.Namespace) -> int:
    texts = _texts(args, "embed")
    model = _encoder_model(args, "embed")
    vectors = model.embed(texts, normalize=args.normalize, batch_size=args.batch_size, truncate=args.truncate)
    for text, vector in zip(texts, vectors):
        if args.json:
            print(json.dumps({"text": text, "embedding": vector.tolist()}, ensure_ascii=False))
        else:
            print(" ".join(f"{value:.6f}" for value in vector))
    return 0


def _classify(args: argparse.Namespace) -> int:
    texts = _texts(args, "classify")
    model = _encoder_model(args, "classify")
    for text, result in zip(texts, model.classify(texts, batch_size=args.batch_size, truncate=args.truncate)):
        if args.json:
            record = {"text": text, "label": result.label, "score": result.score, "probabilities": result.probabilities}
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"{result.label}\t{result.score:.4f}")
    return 0


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="encoder-only artifact folder written by `seqport export`")
    p.add_argument("text", nargs="*", help="input texts (default: one per line on stdin)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per encoder call (0: all at once; default 32)")
    p.add_argument(
        "--truncate", action="store_true", help="cut inputs longer than the model's maximum instead of failing"
    )
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime decides)")


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
                f"({m.kv.num_kv_heads} kv) · head_dim {m.kv.head_dim} · {m.kv.dtype} · {m.kv.allocation} KV cache"
            )
        if m.pooling:
            modes = "+".join(m.pooling.modes)
            print(f"  embeddings: {modes} pooling · dimension {m.pooling.dimension} · normalized {m.pooling.normalize}")
        if m.labels:
            print(f"  labels: {', '.join(m.labels)}")
        for name, c in sorted(m.components.items()):
            print(f"  component {name}: {c.file} (sha256 {c.sha256[:12]}…)")
        p = m.provenance
        print(f"  exported by {p.exporter} · torch {p.torch} · onnx {p.onnx} · opset {p.opset}")
        _print_validation(m)
    _print_runtimes()
    return 0


def _print_runtimes() -> None:
    """Each backend of RuntimeOptions.backend: installed or not, its version and providers/devices."""
    from importlib.metadata import PackageNotFoundError, version

    print("runtimes (RuntimeOptions.backend / --runtimes):")
    try:
        from seqport.runtimes.onnxruntime import available_providers, ort
    except ImportError:
        print("  onnxruntime: not installed (pip install 'seqport[cpu]' or 'seqport[gpu]')")
    else:
        print(f"  onnxruntime {ort.__version__}: providers {', '.join(available_providers())}")
    if importlib.util.find_spec("torch") is None:  # found without importing it: the engine stays torch-free
        print("  torch (reference): not installed (pip install 'seqport[export]')")
        return
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "(version unknown)"
    devices = "cpu" if "+cpu" in torch_version else "cpu, cuda (if torch sees a GPU)"
    print(f"  torch {torch_version} (reference; loads the checkpoint from provenance.source): devices {devices}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _bench(args: argparse.Namespace) -> int:
    from seqport.engine import benchmark

    if args.plot and importlib.util.find_spec("matplotlib") is None:  # say so before minutes of measuring
        raise SeqportError("--plot needs matplotlib: pip install matplotlib (or drop --plot)")
    runtimes = [name.strip() for name in args.runtimes.split(",") if name.strip()]

    def progress(record) -> None:
        print(f"measured {record['runtime']} batch {record['batch']}", file=sys.stderr)

    records = benchmark.run_benchmarks(
        args.artifact,
        runtimes,
        args.batch_sizes,
        on_record=None if args.quiet else progress,
        provider=args.provider,
        new_tokens=args.new_tokens,
        input_length=args.input_length,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
    )
    print(benchmark.format_table(records))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, sort_keys=True) + "\n" for record in records)
    if args.plot:
        benchmark.write_plot(records, args.plot)
    return 0


def _add_bench_parser(sub) -> None:
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
    p.add_argument(
        "--task",
        choices=("feature-extraction", "sequence-classification"),
        help="encoder-only models (BERT, RoBERTa, ...): export hidden states for `seqport embed` "
        "(pooling as the sentence-transformers folder declares) or logits for `seqport classify`; "
        "default: what the checkpoint is (a *ForSequenceClassification head or not)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--optimize",
        action="store_true",
        help="apply onnxruntime's transformer fusions offline, validate again, record them in the manifest",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="store weights as int8 (dynamic quantization), gated on greedy token agreement with fp32",
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: weights and activations in float16 (float32 graph I/O), gated on greedy token "
        "agreement with fp32; T5 stays fp32 (docs/gpu.md)",
    )
    p.add_argument(
        "--kv-cache",
        choices=["growing", "preallocated"],
        default="growing",
        help="growing: the decoder returns past + new K/V each step (concatenation); preallocated: the "
        "engine sizes one buffer per request and the decoder writes the new K/V into it in place "
        "(docs/manifest.md; benchmarks/kv_growth.py measures both)",
    )
    p.set_defaults(run=_export)

    p = sub.add_parser(
        "generate",
        help="generate text with an exported artifact",
        description="Generate for each TEXT (or each --ids list, or each line on stdin); prints one "
        "output per input, in order. Greedy search unless --do-sample or --num-beams; options not "
        "given come from the manifest's generation defaults. IDS are token ids like '5 17 42'. "
        "docs/decoding.md describes every option.",
    )
    p.add_argument("artifact", help="artifact folder written by `seqport export`")
    p.add_argument("text", nargs="*", help="input texts")
    p.add_argument("--ids", action="append", type=_id_list, metavar="IDS", help="an input as token ids (repeatable)")
    for flag, dest, keywords in _GENERATION_FLAGS:
        p.add_argument(flag, dest=dest, **keywords)
    p.add_argument("--prefix", metavar="TEXT", help="forced target prefix, as text (tokenized without specials)")
    p.add_argument("--stream", action="store_true", help="print each output as its tokens arrive")
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime decides)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per input: text, ids (generated, no prompt), score, finish_reason; "
        "with several sequences also `sequences`, best first",
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

    _add_bench_parser(sub)

    p = sub.add_parser(
        "info",
        help="describe an artifact and the available providers",
        description="Print an artifact's manifest summary and parity figures, "
        "and the runtimes and execution providers this installation can use.",
    )
    p.add_argument("artifact", nargs="?", help="artifact folder (optional)")
    p.set_defaults(run=_info)

    p = sub.add_parser(
        "embed",
        help="sentence embeddings with an encoder-only artifact",
        description="Print one embedding per TEXT (or per line on stdin), pooled as the exported "
        "model declares (e.g. mean pooling + L2 normalisation for sentence-transformers models). "
        "Needs an artifact exported with --task feature-extraction.",
    )
    _add_encoder_options(p)
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the embeddings (default: as the exported model declares)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per input: text, embedding")
    p.set_defaults(run=_embed)

    p = sub.add_parser(
        "classify",
        help="classify texts with an encoder-only artifact",
        description="Print the most probable label and its probability for each TEXT (or each "
        "line on stdin). Needs an artifact exported with --task sequence-classification.",
    )
    _add_encoder_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per input: text, label, score, probabilities")
    p.set_defaults(run=_classify)
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
