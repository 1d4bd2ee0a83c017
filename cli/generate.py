"""`seqport generate`, `seqport embed` and `seqport classify`: run an artifact on texts or ids."""

from __future__ import annotations

import argparse
import json

from seqport.cli.runtime_args import add_runtime_options, load_with_runtime_options
from seqport.cli.textio import add_io_options, chunks, input_lines, output_stream, parse_jsonl, progress_bar
from seqport.engine.errors import InputError, SeqportError


def _id_list(text: str) -> list[int]:
    """ "5 17 42" or "5,17,42" → [5, 17, 42]."""
    try:
        return [int(token) for token in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like '5 17 42', got {text!r}") from None


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


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    """Every GenerationConfig flag (_GENERATION_FLAGS) and --prefix."""
    for flag, dest, keywords in _GENERATION_FLAGS:
        p.add_argument(flag, dest=dest, **keywords)
    p.add_argument("--prefix", metavar="TEXT", help="forced target prefix, as text (tokenized without specials)")


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """Add the generate subcommand to `sub`."""
    p = sub.add_parser(
        "generate",
        help="generate text with an exported artifact",
        description="Generate for each TEXT (or each --ids list, or each line of --input FILE or stdin, "
        "blank lines included); prints one output per input, in order (--jsonl keeps them one per line "
        "whatever the text holds). Options may come before or after the texts. Greedy search unless "
        "--do-sample or --num-beams; options not given come from the manifest's generation defaults. "
        "IDS are token ids like '5 17 42'. "
        "docs/decoding.md describes every option.",
    )
    p.add_argument("artifact", help="artifact folder written by `seqport export`")
    p.add_argument("text", nargs="*", help="input texts")
    p.add_argument("--ids", action="append", type=_id_list, metavar="IDS", help="an input as token ids (repeatable)")
    add_generation_flags(p)
    p.add_argument("--stream", action="store_true", help="print each output as its tokens arrive")
    add_runtime_options(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per input: text, ids (generated, no prompt), score, finish_reason; "
        "with several sequences also `sequences`, best first",
    )
    p.add_argument("--chat", action="store_true", help="each input is one user turn, rendered with the chat template")
    add_chat_options(p)
    add_io_options(p, ids=True)
    p.set_defaults(run=_generate)


def add_chat_options(p: argparse.ArgumentParser) -> None:
    """--system and --chat-template, shared by `generate --chat` and `chat`."""
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system message before the user turn")
    p.add_argument(
        "--chat-template", metavar="FILE", help="a jinja chat template to use instead of the artifact's (docs/chat.md)"
    )


def _generate(args: argparse.Namespace) -> int:
    if args.stream and (args.json or args.jsonl):
        raise SeqportError("--stream prints text as it arrives and cannot be combined with --json or --jsonl")
    inputs = _generation_inputs(args)
    model = load_generating(args, "generate")
    overrides = generation_overrides(args, model)
    if any(isinstance(item, list) for item in inputs):  # --jsonl mixing texts and ids: all as ids
        inputs = [model.input_ids([item])[0] if isinstance(item, str) and not _blank(item) else item for item in inputs]
    if args.chat:
        if not hasattr(model, "apply_chat_template"):
            kind = model.manifest.architecture
            raise SeqportError(f"--chat needs a decoder-only artifact; {args.artifact} is {kind}")
        template = chat_template_option(args)
        inputs = [item if _blank(item) else _chat_turn(model, args.system, item, template) for item in inputs]
    with output_stream(args) as out:
        if args.stream:
            _stream(model, inputs, overrides, out)
            return 0
        for result in _results(model, inputs, overrides, args):
            if not (args.json or args.jsonl):
                print(result.text if result is not None else "", file=out)
                continue
            record = _sequence_record(result.sequences[0]) if result is not None else dict(_EMPTY)
            if result is not None and len(result.sequences) > 1:
                record["sequences"] = [_sequence_record(s) for s in result.sequences]
            print(json.dumps(record, ensure_ascii=False), file=out)
    return 0


#: the output of a blank input line (it keeps its place; nothing is generated)
_EMPTY = {"text": "", "ids": [], "score": 0.0, "finish_reason": "empty_input"}


def _results(model, inputs: list, overrides: dict, args: argparse.Namespace) -> list:
    """model.generate over the non-blank inputs (in chunks under a progress bar when one is
    shown); None for each blank one. Input i samples with seed + i however it is chunked."""
    kept = [index for index, item in enumerate(inputs) if not _blank(item)]
    results: list = [None] * len(inputs)
    bar = progress_bar(args, len(kept), "input")
    size = (overrides.get("batch_size") or 16) if bar is not None else 0
    seed = overrides.get("seed", model.default_config.seed)
    for start, chunk in chunks(kept, size):
        offset = {} if seed is None else {"seed": seed + start}
        for index, result in zip(chunk, model.generate([inputs[i] for i in chunk], **{**overrides, **offset})):
            results[index] = result
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return results


def _blank(item: str | list[int]) -> bool:
    return isinstance(item, str) and not item.strip()


def _stream(model, inputs: list, overrides: dict, out) -> None:
    """One input at a time, each line printed as it grows; a blank input prints an empty line.
    The k-th non-blank input samples with seed + k, as `_results` and a batch would."""
    seed = overrides.get("seed", model.default_config.seed)
    kept = 0
    for item in inputs:
        if not _blank(item):
            offset = {} if seed is None else {"seed": seed + kept}
            for piece in model.stream([item], **{**overrides, **offset}):
                print(piece.text, end="", flush=True, file=out)
            kept += 1
        print(file=out)


def _chat_turn(model, system: str | None, text: str, template: str | None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return model.apply_chat_template(messages, chat_template=template)


def _generation_inputs(args: argparse.Namespace) -> list:
    if args.ids:
        return args.ids
    if args.text:
        return args.text
    lines = input_lines(args, "generate from")
    return parse_jsonl(lines, ids=True) if args.jsonl else lines


def load_generating(args: argparse.Namespace, verb: str):
    """The artifact of a generating command, loaded; refused up front when it is encoder-only.

    Raises:
        SeqportError: an encoder-only artifact (names embed/classify), or as load() raises.
    """
    from seqport.engine.manifest import load_manifest

    kind = load_manifest(args.artifact).architecture
    if kind == "encoder-only":
        raise SeqportError(
            f"{args.artifact} is an encoder-only artifact, which does not generate text; `seqport {verb}` needs a "
            "decoder-only or encoder-decoder one (use `seqport embed` or `seqport classify` with this one)"
        )
    return load_with_runtime_options(args)


def chat_template_option(args: argparse.Namespace) -> str | None:
    """The text of --chat-template FILE, or None (the artifact's template is used)."""
    if args.chat_template is None:
        return None
    try:
        with open(args.chat_template, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --chat-template {args.chat_template}: {exc}") from None


def generation_overrides(args: argparse.Namespace, model) -> dict:
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


