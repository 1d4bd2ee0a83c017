"""docs/own-model.md is a test: its python blocks run top to bottom as one script."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "own-model.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_doc_has_the_promised_parts():
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    code = "\n".join(blocks)
    assert len(blocks) >= 5
    for needed in ("class TinySeq2SeqAdapter", "export_adapter(", "sp.load(", ".generate(", ".embed("):
        assert needed in code, f"docs/own-model.md lost {needed!r}"
    assert "seqport.export.models" not in code, "the doc's model must be the user's own, not the library's"


@pytest.mark.export
def test_doc_code_exports_validates_and_generates(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "own_model_doc"}
    for index, block in enumerate(python_blocks(DOC.read_text(encoding="utf-8"))):
        exec(compile(block, f"{DOC.name}[block {index}]", "exec"), namespace)  # the doc is the test

    manifest = namespace["manifest"]
    assert manifest.architecture == "encoder-decoder" and manifest.family == "tiny-seq2seq"
    assert set(manifest.validation.max_abs_diff) == {"encoder", "decoder"}
    assert all(diff <= 1e-4 for outputs in manifest.validation.max_abs_diff.values() for diff in outputs.values())
    assert (tmp_path / "tiny-artifact" / "seqport.json").is_file()
    results = namespace["results"]
    assert len(results) == 3 and all(r.ids for r in results)
    assert len({tuple(r.ids) for r in results}) > 1, "outputs should differ between inputs for the check to mean much"
    # the doc itself asserts the engine's greedy ids equal its PyTorch greedy loop; check it ran
    assert callable(namespace["torch_greedy"])

    vectors = namespace["vectors"]
    assert vectors.shape == (3, 24) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    encoder_manifest = namespace["encoder"].manifest
    assert encoder_manifest.architecture == "encoder-only" and encoder_manifest.pooling.modes == ["mean"]
