"""Give an artifact exported before decoder-only greedy heads its decoder's head, in place.

    python benchmarks/peers/add_greedy_head.py ARTIFACT [ARTIFACT ...]

The same step every export now ends with (export/greedy_head.py: ArgMax and log-probability
as decoder outputs, checked against numpy, the manifest's sha256 updated): the LLM benchmark's
seqport variants under --work built before it get the decoder-only greedy lane without being
exported and quantized again. The decoder.onnx is rewritten (its weights file is not touched):
do not run it on a folder whose decoder.onnx is a hard link into material others read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from seqport.engine.manifest import load_manifest
from seqport.export.greedy_head import GREEDY_IDS, add_greedy_head


def main() -> None:
    for folder in map(Path, sys.argv[1:]):
        manifest = load_manifest(folder)
        if GREEDY_IDS in manifest.components["decoder"].outputs:
            print(f"{folder}: has the head already", file=sys.stderr)
            continue
        add_greedy_head(folder, manifest).save(folder)
        load_manifest(folder)  # read back as the engine will
        print(f"{folder}: greedy head added", file=sys.stderr)


if __name__ == "__main__":
    main()
