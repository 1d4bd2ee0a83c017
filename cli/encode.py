"""`seqport embed` and `seqport classify`: run an encoder-only artifact on texts."""

from __future__ import annotations

import argparse
import json

from seqport.cli.runtime_args import add_runtime_options, load_with_runtime_options
from seqport.cli.textio import add_io_options, chunks, input_lines, output_stream, parse_jsonl, progress_bar
from seqport.engine.errors import SeqportError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the embed and classify subcommands (encoder-only artifacts) to `sub`."""
    _add_embed_parser(sub)
    _add_classify_parser(sub)


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="encoder-only artifact folder written by `seqport export`")
    p.add_argument("text", nargs="*", help="input texts (default: one per line of --input FILE or stdin)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per encoder call (0: all at once; default 32)")
    p.add_argument(
        "--truncate", action="store_true", help="cut inputs longer than the model's maximum instead of failing"
    )
    add_runtime_options(p)
    add_io_options(p)


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
    lines = input_lines(args, verb)
    return parse_jsonl(lines) if args.jsonl else lines  # type: ignore[return-value]


def _encoder_model(args: argparse.Namespace, verb: str):
    from seqport.engine.manifest import load_manifest

    kind = load_manifest(args.artifact).architecture  # before any session is built
    if kind != "encoder-only":
        article = "an" if kind.startswith("e") else "a"
        raise SeqportError(
            f"{args.artifact} is {article} {kind} artifact, which generates text; `seqport {verb}` needs an "
            "encoder-only one (use `seqport generate` with this one)"
        )
    return load_with_runtime_options(args)


def _mapped(args: argparse.Namespace, texts: list[str], run) -> list:
    """run(chunk) over the non-blank `texts` in --batch-size chunks, with a progress bar when one
    is wanted; None for each blank text (it keeps its place: an empty output)."""
    kept = [index for index, text in enumerate(texts) if text.strip()]
    results: list = [None] * len(texts)
    bar = progress_bar(args, len(kept), "text")
    for _, chunk in chunks(kept, args.batch_size if bar is not None else 0):
        for index, result in zip(chunk, run([texts[i] for i in chunk])):
            results[index] = result
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return results


def _embed(args: argparse.Namespace) -> int:
    texts = _texts(args, "embed")
    model = _encoder_model(args, "embed")
    options = dict(normalize=args.normalize, batch_size=args.batch_size, truncate=args.truncate)
    vectors = _mapped(args, texts, lambda chunk: model.embed(chunk, **options))
    with output_stream(args) as out:
        for text, vector in zip(texts, vectors):
            values = vector.tolist() if vector is not None else None
            if args.json or args.jsonl:
                print(json.dumps({"text": text, "embedding": values}, ensure_ascii=False), file=out)
            else:
                print(" ".join(f"{value:.6f}" for value in values or ()), file=out)
    return 0


def _classify(args: argparse.Namespace) -> int:
    texts = _texts(args, "classify")
    model = _encoder_model(args, "classify")
    options = dict(batch_size=args.batch_size, truncate=args.truncate)
    results = _mapped(args, texts, lambda chunk: model.classify(chunk, **options))
    with output_stream(args) as out:
        for text, result in zip(texts, results):
            if args.json or args.jsonl:
                record = {"text": text, "label": None, "score": None, "probabilities": None}
                if result is not None:
                    record.update(label=result.label, score=result.score, probabilities=result.probabilities)
                print(json.dumps(record, ensure_ascii=False), file=out)
            else:
                print(f"{result.label}\t{result.score:.4f}" if result is not None else "", file=out)
    return 0
