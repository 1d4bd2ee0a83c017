"""Give an artifact exported before decoder-only greedy heads its decoder's head, in place.

    python benchmarks/peers/add_greedy_head.py [--replace] ARTIFACT [ARTIFACT ...]

The same step every export now ends with (export/greedy_head.py: the argmax (blocked, or TopK(k=1)
over the row) and log-probability as decoder outputs, checked against numpy, the manifest's sha256
updated): the LLM benchmark's
seqport variants under --work built before it get the decoder-only greedy lane without being
exported and quantized again. `--replace` takes an existing head out first and adds the current
one (artifacts whose head still chose with ArgMax, or with TopK over a row the blocked argmax
now takes). The decoder.onnx is rewritten (its weights
file is not touched): do not run it on a folder whose decoder.onnx is a hard link into material
others read.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import onnx

from seqport.engine.manifest import Manifest, load_manifest, sha256_of
from seqport.export.greedy_head import GREEDY_IDS, GREEDY_LOGPROBS, HEAD_PREFIX, add_greedy_head


def without_head(folder: Path, manifest: Manifest) -> Manifest:
    """The decoder with the head's nodes, initializers and outputs removed (graph and manifest)."""
    decoder = manifest.components["decoder"]
    path = folder / decoder.file
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    for field, keep in (
        (graph.node, lambda n: not n.name.startswith(HEAD_PREFIX)),
        (graph.initializer, lambda i: not i.name.startswith(HEAD_PREFIX)),
        (graph.output, lambda o: o.name not in (GREEDY_IDS, GREEDY_LOGPROBS)),
    ):
        kept = [item for item in field if keep(item)]
        del field[:]
        field.extend(kept)
    onnx.save(model, str(path))
    outputs = {k: v for k, v in decoder.outputs.items() if k not in (GREEDY_IDS, GREEDY_LOGPROBS)}
    component = dataclasses.replace(decoder, outputs=outputs, sha256=sha256_of(path))
    return dataclasses.replace(manifest, components={**manifest.components, "decoder": component})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replace", action="store_true", help="take an existing head out and add the current one")
    p.add_argument("artifacts", nargs="+", type=Path)
    args = p.parse_args()
    for folder in args.artifacts:
        manifest = load_manifest(folder)
        if GREEDY_IDS in manifest.components["decoder"].outputs:
            if not args.replace:
                print(f"{folder}: has the head already (--replace to renew it)")
                continue
            manifest = without_head(folder, manifest)
        add_greedy_head(folder, manifest).save(folder)
        load_manifest(folder)  # read back as the engine will
        print(f"{folder}: greedy head added")


if __name__ == "__main__":
    main()
