"""The bundled translator: quality on held-out books, and engine == PyTorch greedy."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
sacrebleu = pytest.importorskip("sacrebleu")

#: chrF and BLEU (sacrebleu defaults: 13a tokenization, exp smoothing) of the engine's greedy
#: output on test_sentences.tsv, measured when the checkpoint was trained (see
#: export/models/translator/DATA_CARD.md; README.md quotes both); a regression of more than
#: SLACK points in export, engine or tokenizer fails the test.
MEASURED_CHRF = 34.43
MEASURED_BLEU = 14.43
SLACK = 2.0
README = Path(__file__).resolve().parents[1] / "README.md"
MAX_NEW_TOKENS = 255  # the evaluation's budget: max_positions - 1


@pytest.fixture(scope="session")
def translator(tmp_path_factory):
    from seqport.export.bundled import bundled_checkpoint, cached_artifact

    cache = tmp_path_factory.mktemp("cache")
    os.environ["SEQPORT_CACHE"] = str(cache)
    checkpoint = bundled_checkpoint()
    artifact, reused = cached_artifact(checkpoint, progress=False)
    assert not reused
    return checkpoint, artifact, cache


def _test_pairs(checkpoint) -> tuple[list[str], list[str]]:
    with open(checkpoint / "test_sentences.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 50
    return [r[0] for r in rows], [r[1] for r in rows]


def test_chrf_and_bleu_on_held_out_sentences_and_greedy_equals_pytorch(translator):
    import seqport.engine as sp
    from seqport.engine.inputs import pad_batch
    from seqport.export.models import Transformer
    from seqport.export.reference import greedy_generate

    checkpoint, artifact, _ = translator
    sources, references = _test_pairs(checkpoint)
    model = sp.load(artifact)
    results = model.generate(sources, max_new_tokens=MAX_NEW_TOKENS, batch_size=32)
    hypotheses = [r.text for r in results]
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert chrf >= MEASURED_CHRF - SLACK, f"chrF {chrf:.2f} < measured {MEASURED_CHRF} - {SLACK}"
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert bleu >= MEASURED_BLEU - SLACK, f"BLEU {bleu:.2f} < measured {MEASURED_BLEU} - {SLACK}"

    torch_model = Transformer.load(checkpoint)
    batch = model.input_ids(sources)
    expected = []
    for start in range(0, len(batch), 16):
        ids, mask = pad_batch(batch[start : start + 16], 0)
        expected += greedy_generate(torch_model, torch.tensor(ids), torch.tensor(mask), MAX_NEW_TOKENS)
    for row, result in enumerate(results):
        generated = result.ids + ([2] if result.finish_reason == "eos" else [])
        assert generated == expected[row], f"sentence {row} differs from PyTorch greedy"


def test_readme_quotes_the_measured_figures():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert f"(BLEU {MEASURED_BLEU:.2f}, chrF {MEASURED_CHRF:.2f}); a test guards both" in text


def test_demo_prints_translations_and_speed(translator):
    _, _, cache = translator
    env = {**os.environ, "SEQPORT_CACHE": str(cache)}
    run = subprocess.run(
        [sys.executable, "-m", "seqport.cli", "demo", "--max-new-tokens", "24", "The Lord is good."],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "reused the bundled translator" in run.stdout
    assert "EN  The Lord is good." in run.stdout and "FR  " in run.stdout
    assert "tokens/s" in run.stdout and "PyTorch eager" in run.stdout
