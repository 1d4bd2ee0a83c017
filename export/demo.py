"""`seqport demo`: the whole promise on the bundled translator, in a minute.

Exports the bundled checkpoint (validated against PyTorch; cached and reused), translates a
few sentences with the torch-free engine, and times the engine beside PyTorch eager on the
same inputs with the same greedy loop.
"""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path

import torch

from seqport.engine.api import load
from seqport.engine.errors import ArtifactError, SeqportError
from seqport.engine.inputs import pad_batch
from seqport.engine.manifest import load_manifest, sha256_of
from seqport.export.models.transformer import Transformer
from seqport.export.pipeline import export_model
from seqport.export.reference import greedy_generate

SENTENCES = [
    "In the beginning God created the heavens and the earth.",
    "The Lord is my shepherd; I shall not want.",
    "Love your neighbor as yourself.",
    "The people went out and gathered bread in the field.",
    "He said to them, Go into all the world.",
]


def bundled_checkpoint() -> Path:
    """Folder of the translator shipped inside the package."""
    folder = Path(str(resources.files("seqport.export.models") / "translator"))
    if not (folder / "model.safetensors").is_file():
        raise ArtifactError(f"the bundled translator is missing from {folder}; reinstall seqport")
    return folder


def cached_artifact(checkpoint: Path, progress: bool = True) -> tuple[Path, bool]:
    """Export `checkpoint` into the cache once; later runs reuse it. Returns (folder, reused)."""
    root = Path(os.environ.get("SEQPORT_CACHE", Path.home() / ".cache" / "seqport"))
    folder = root / f"translator-{sha256_of(checkpoint / 'model.safetensors')[:12]}"
    try:
        load_manifest(folder)
        return folder, True
    except SeqportError:
        export_model(checkpoint, folder, progress=progress, overwrite=True)  # our own cache entry
        return folder, False


def _tokens_per_second(run, count_tokens, repeats: int = 3) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return count_tokens(out) / best


def speed(artifact_model, torch_model: Transformer, sources: list[list[int]], max_new: int) -> dict[str, float]:
    """Greedy tokens/s of the engine and of PyTorch eager on the same batch (single sitting)."""
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
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    figures = speed(model, Transformer.load(checkpoint), model.input_ids(inputs), max_new_tokens)
    ratio = figures["engine"] / figures["pytorch"]
    print(
        f"speed, greedy, batch {len(inputs)}: engine {figures['engine']:.0f} tokens/s · "
        f"PyTorch eager {figures['pytorch']:.0f} tokens/s · {ratio:.1f}×"
    )
    return 0
