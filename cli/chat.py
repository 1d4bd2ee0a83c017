"""`seqport chat ARTIFACT`: an interactive, streaming conversation with an instruct model.

Each line read is a user turn; the reply streams to stdout as it is generated and joins the
history, which the chat template renders whole for the next turn. `/reset` clears the history
(the --system message stays), `/exit` or end of input (Ctrl-D) ends the session. The prompt
("> ") goes to stderr and only when stdin is a terminal, so piped sessions print replies only.
"""

from __future__ import annotations

import argparse
import sys

from seqport.cli.generate import (
    add_chat_options,
    add_generation_flags,
    chat_template_option,
    generation_overrides,
    load_generating,
)
from seqport.cli.runtime_args import add_runtime_options
from seqport.engine.errors import ConfigError, SeqportError

HELP = "/reset: forget the conversation · /exit or Ctrl-D: quit"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the chat subcommand to `sub`."""
    p = sub.add_parser(
        "chat",
        help="chat with a decoder-only artifact that carries a chat template",
        description="Interactive chat: each line is a user turn and the reply streams as it is generated. "
        f"{HELP}. Generation flags are those of `seqport generate` (greedy unless --do-sample).",
    )
    p.add_argument("artifact", help="decoder-only artifact folder written by `seqport export`")
    add_generation_flags(p)
    add_chat_options(p)
    add_runtime_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The REPL; returns 0 at /exit or end of input.

    Raises:
        SeqportError: not a decoder-only artifact, or no chat template (and no --chat-template).
    """
    model = load_generating(args, "chat")
    if not hasattr(model, "chat"):
        kind = model.manifest.architecture
        raise SeqportError(f"{args.artifact} is an {kind} artifact; `seqport chat` needs a decoder-only one")
    template = chat_template_option(args)
    if template is None and model.chat_template is None:
        raise ConfigError(f"{args.artifact}: " + _no_template())
    overrides = generation_overrides(args, model)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(HELP, file=sys.stderr)
    for line in _turns(interactive):
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history = list(system)
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        pieces = []
        for piece in model.stream_chat(history, chat_template=template, **overrides):
            pieces.append(piece.text)
            print(piece.text, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(pieces)})
    return 0


def _turns(interactive: bool):
    """Lines read one at a time (a "> " prompt on stderr at a terminal), until end of input (Ctrl-D)."""
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:
            if interactive:
                print(file=sys.stderr)
            return
        yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _no_template() -> str:
    from seqport.engine.chat import NO_TEMPLATE

    return NO_TEMPLATE.replace("as chat_template=", "with --chat-template FILE")
