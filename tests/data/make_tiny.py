"""Regenerate tests/data/tiny_checkpoint and tests/data/tiny_artifact.

The committed artifact lets the engine tests run where torch is not installed (CI's runtime-
only environment). Run from the repository root: python tests/data/make_tiny.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tiny import write_tiny_checkpoint  # noqa: E402

from seqport.export.pipeline import export_model  # noqa: E402

if __name__ == "__main__":
    checkpoint, artifact = HERE / "tiny_checkpoint", HERE / "tiny_artifact"
    shutil.rmtree(checkpoint, ignore_errors=True)
    shutil.rmtree(artifact, ignore_errors=True)
    write_tiny_checkpoint(checkpoint)
    manifest = export_model(checkpoint, artifact, progress=False)
    # the source path is machine-specific; record it relative to the repository
    text = (artifact / "seqport.json").read_text().replace(str(checkpoint), "tests/data/tiny_checkpoint")
    (artifact / "seqport.json").write_text(text)
    print("wrote", checkpoint, artifact, manifest.validation.max_abs_diff)
