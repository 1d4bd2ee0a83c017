"""`seqport demo`: the whole promise on the bundled translator, in a minute.

Exports the bundled checkpoint (validated against PyTorch; cached and reused), translates a
few sentences with the torch-free engine, and times the engine beside PyTorch eager on the
same inputs with the same greedy loop. The export side (torch) is imported only when the
command runs; without it the command says what to install.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from seqport.engine.api import load
from seqport.engine.errors import SeqportError
from seqport.engine.inputs import pad_batch
from seqport.engine.manifest import load_manifest

SENTENCES = [
    "In the beginning God created the heavens and the earth.",
    "The Lord is my shepherd; I shall not want.",
    "Love your neighbor as yourself.",
    "The people went out and gathered bread in the field.",
    "He said to them, Go into all the world.",
]
DEMO_HINT = "`seqport demo` needs the export extra (torch): pip install 'seqport[export]'"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the demo subcommand to `sub`."""
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


def _demo(args: argparse.Namespace) -> int:
    try:
        import seqport.export.pipeline  # noqa: F401  (torch, onnx: checked here, so a missing extra is one line)
    except ImportError as exc:
        raise SeqportError(f"{DEMO_HINT} ({exc.name} is missing)") from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    return run_demo(args.text, provider=args.provider, max_new_tokens=args.max_new_tokens, progress=not args.quiet)


def _tokens_per_second(run, count_tokens, repeats: int = 3) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return count_tokens(out) / best


def speed(artifact_model, checkpoint: Path, sources: list[list[int]], max_new: int) -> dict[str, float]:
    """Greedy tokens/s of the engine and of PyTorch eager on the same batch (single sitting).

    Args:
        artifact_model: the loaded artifact (seqport.engine.load).
        checkpoint: the PyTorch checkpoint folder it was exported from.
        sources: the batch as token ids, one list per input.
        max_new: most new tokens per input.
    """
    import torch

    from seqport.export.models import Transformer
    from seqport.export.reference import greedy_generate

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch_model = Transformer.load(checkpoint)
    ids, mask = pad_batch(sources, torch_model.config.pad_id)
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
    engine = _tokens_per_second(
        lambda: artifact_model.generate(sources, max_new_tokens=max_new),
        lambda results: sum(len(r.ids) + (r.finish_reason == "eos") for r in results),
    )
    eager = _tokens_per_second(
        lambda: greedy_generate(torch_model, ids_t, mask_t, max_new),
        lambda rows: sum(len(row) for row in rows),
    )
    return {"engine": engine, "pytorch": eager}


def run_demo(texts: list[str], provider: str = "cpu", max_new_tokens: int = 64, progress: bool = True) -> int:
    """Export (or reuse), translate `texts` (default: SENTENCES) and compare speeds; returns 0."""
    from seqport.export.bundled import bundled_checkpoint, cached_artifact  # export side: only when run

    checkpoint = bundled_checkpoint()
    artifact, reused = cached_artifact(checkpoint, progress)
    manifest = load_manifest(artifact)
    print(f"{'reused' if reused else 'exported'} the bundled translator (English → French): {artifact}")
    for component, outputs in sorted(manifest.validation.max_abs_diff.items()):
        figures = ", ".join(f"{name} {diff:.1e}" for name, diff in sorted(outputs.items()))
        print(f"  parity vs PyTorch, {component}: {figures} (tolerance 1e-4)")
    model = load(artifact, provider=provider)
    inputs = texts or SENTENCES
    print(f"\ntranslations (torch-free engine, {provider}, greedy):")
    for text, result in zip(inputs, model.generate(inputs, max_new_tokens=max_new_tokens)):
        print(f"  EN  {text}\n  FR  {result.text}\n")
    figures = speed(model, checkpoint, model.input_ids(inputs), max_new_tokens)
    ratio = figures["engine"] / figures["pytorch"]
    print(
        f"speed, greedy, batch {len(inputs)}: engine {figures['engine']:.0f} tokens/s · "
        f"PyTorch eager {figures['pytorch']:.0f} tokens/s · {ratio:.1f}×"
    )
    return 0
