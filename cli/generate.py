"""`seqport generate`, `seqport embed` and `seqport classify`: run an artifact on texts or ids."""

from __future__ import annotations

import argparse
import json
import sys

from seqport.engine.errors import InputError, SeqportError


def add_encoder_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the embed and classify subcommands (encoder-only artifacts) to `sub`."""
    _add_embed_parser(sub)
    _add_classify_parser(sub)


def _id_list(text: str) -> list[int]:
    """ "5 17 42" or "5,17,42" → [5, 17, 42]."""
    try:
        return [int(token) for token in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like '5 17 42', got {text!r}") from None


def stdin_lines() -> list[str]:
    """The non-blank lines of stdin, decoded as UTF-8 with a clear error for other bytes.

    Raises:
        InputError: a line is not valid UTF-8 (names the line and the byte).
    """
    lines = []
    for number, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"line {number} of stdin is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                "convert it first, e.g. iconv -f latin1 -t utf-8"
            ) from None
        if line.strip():
            lines.append(line)
    return lines


#: `seqport generate` flags that set a GenerationConfig option: (flag, option, argparse keywords)
_GENERATION_FLAGS = [
    ("--max-new-tokens", "max_new_tokens", dict(type=int, help="most tokens per output, EOS included")),
    (
        "--max-memory-bytes",
        "max_memory_bytes",
        dict(type=int, help="refuse requests whose KV cache + logits estimate exceeds this (default 4 GiB)"),
    ),
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


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """Add the generate subcommand to `sub`."""
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


def _generate(args: argparse.Namespace) -> int:
    from seqport.engine.api import load
    from seqport.engine.runtime import RuntimeOptions

    if args.stream and args.json:
        raise SeqportError("--stream prints text as it arrives and cannot be combined with --json")
    inputs = _generation_inputs(args)
    model = load(args.artifact, provider=args.provider, options=RuntimeOptions(intra_op_threads=args.threads))
    overrides = _generation_overrides(args, model)
    if args.stream:
        _stream(model, inputs, overrides)
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


def _stream(model, inputs: list, overrides: dict) -> None:
    """One input at a time, each line printed as it grows."""
    for index, item in enumerate(inputs):
        seed = {"seed": overrides["seed"] + index} if "seed" in overrides else {}  # as a batch would
        for piece in model.stream([item], **{**overrides, **seed}):
            print(piece.text, end="", flush=True)
        print()


def _generation_inputs(args: argparse.Namespace) -> list:
    if args.ids:
        return args.ids
    if args.text:
        return args.text
    if not sys.stdin.isatty():
        return stdin_lines()
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


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="encoder-only artifact folder written by `seqport export`")
    p.add_argument("text", nargs="*", help="input texts (default: one per line on stdin)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per encoder call (0: all at once; default 32)")
    p.add_argument(
        "--truncate", action="store_true", help="cut inputs longer than the model's maximum instead of failing"
    )
    p.add_argument("--provider", default="cpu", help="execution provider (see `seqport info`)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime decides)")


def _add_embed_parser(sub: argparse._SubParsersAction) -> None:
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


def _add_classify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="classify texts with an encoder-only artifact",
        description="Print the most probable label and its probability for each TEXT (or each "
        "line on stdin). Needs an artifact exported with --task sequence-classification.",
    )
    _add_encoder_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per input: text, label, score, probabilities")
    p.set_defaults(run=_classify)


def _texts(args: argparse.Namespace, verb: str) -> list[str]:
    if args.text:
        return args.text
    if not sys.stdin.isatty():
        return stdin_lines()
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
