"""The README's validation claim: "encoder and decoder run in PyTorch and onnxruntime on batch 1
and 3, padded sources, past lengths 0, 1 and 7".

What validation *runs* is read from the feeds it builds (a spy around export/validate.py's
source maker and decoder runner), not from the labels it writes, and compared with the claim;
the labels the manifest records are compared with lists written here. Dropping one case from
validation on purpose must break the claim check (issue #17: the optimize tests compared the
manifest's case list with itself).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

README = Path(__file__).resolve().parents[1] / "README.md"
CLAIM = "batch 1 and 3, padded sources, past lengths 0, 1 and 7"

#: seqport.json validation.cases of an encoder-decoder export.
ENCODER_DECODER_CASES = [
    "encoder batch=1 padded",
    "encoder batch=3 padded",
    "batch=1 past=0 new=1 logits=last",
    "batch=1 past=1 new=1 logits=last",
    "batch=1 past=7 new=1 logits=last",
    "batch=3 past=0 new=1 logits=last",
    "batch=3 past=1 new=1 logits=last",
    "batch=3 past=7 new=2 logits=last",
    "batch=3 past=0 new=5 logits=all",
]
#: seqport.json validation.cases of a decoder-only export.
DECODER_ONLY_CASES = [
    "batch=1 past=0 new=1 logits=last",
    "batch=1 past=1 new=1 logits=last",
    "batch=1 past=7 new=1 logits=last",
    "batch=3 past=0 new=5 logits=all left-padded",
    "batch=3 past=1 new=1 logits=last left-padded",
    "batch=3 past=7 new=2 logits=last left-padded",
]


def spy_on_validation(monkeypatch) -> list[tuple[str, int, int, int]]:
    """Record every case validation runs as (component, batch, past length, padded rows)."""
    from seqport.export import validate

    ran: list[tuple[str, int, int, int]] = []
    real_sources, real_run = validate._sources, validate._run_decoder

    def sources(spec, batch, gen):
        ids, mask = real_sources(spec, batch, gen)
        ran.append(("encoder", ids.shape[0], 0, int((mask == 0).any(dim=1).sum())))
        return ids, mask

    def run_decoder(signature, runtime, values, case, allocation, recorder, **options):
        mask = values.get("encoder_attention_mask", values.get("attention_mask"))
        padded = int((mask == 0).any(axis=1).sum())
        ran.append(("decoder", values["input_ids"].shape[0], values["past_key.0"].shape[2], padded))
        return real_run(signature, runtime, values, case, allocation, recorder, **options)

    monkeypatch.setattr(validate, "_sources", sources)
    monkeypatch.setattr(validate, "_run_decoder", run_decoder)
    return ran


def claim_problems(ran: list[tuple[str, int, int, int]], encoder: bool) -> list[str]:
    """What the README claim promises and `ran` lacks: [] when the claim holds."""
    problems = []
    components = ("encoder", "decoder") if encoder else ("decoder",)
    for component in components:
        for batch in (1, 3):
            if not any(r[:2] == (component, batch) for r in ran):
                problems.append(f"{component} batch={batch}")
        if not any(r[0] == component and r[1] == 3 and r[3] > 0 for r in ran):
            problems.append(f"{component} padded rows")
    for batch in (1, 3):
        for past in (0, 1, 7):
            if not any(r[:3] == ("decoder", batch, past) for r in ran):
                problems.append(f"decoder batch={batch} past={past}")
    return problems


def test_readme_states_the_claim_checked_here():
    assert CLAIM in " ".join(README.read_text(encoding="utf-8").split())


def test_encoder_decoder_validation_runs_the_readme_cases(tiny_checkpoint, tmp_path, monkeypatch):
    from seqport.export.pipeline import export_model

    ran = spy_on_validation(monkeypatch)
    manifest = export_model(tiny_checkpoint, tmp_path / "artifact", progress=False)
    assert claim_problems(ran, encoder=True) == []
    assert manifest.validation.cases == ENCODER_DECODER_CASES


def test_dropping_a_validation_case_breaks_the_claim(tiny_checkpoint, tmp_path, monkeypatch):
    """The check above can fail: validation without its batch-1 past-7 case is caught."""
    from seqport.export import validate
    from seqport.export.pipeline import export_model

    kept = tuple(c for c in validate.DECODER_CASES if (c.batch, c.past) != (1, 7))
    assert len(kept) == len(validate.DECODER_CASES) - 1
    monkeypatch.setattr(validate, "DECODER_CASES", kept)
    ran = spy_on_validation(monkeypatch)
    manifest = export_model(tiny_checkpoint, tmp_path / "artifact", progress=False)
    assert claim_problems(ran, encoder=True) == ["decoder batch=1 past=7"]
    assert manifest.validation.cases != ENCODER_DECODER_CASES


def test_decoder_only_validation_runs_the_readme_cases(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from test_hf_causal import _write_checkpoint

    from seqport.export.pipeline import export_model

    checkpoint = _write_checkpoint("gpt2", tmp_path / "checkpoint")
    ran = spy_on_validation(monkeypatch)
    manifest = export_model(checkpoint, tmp_path / "artifact", progress=False)
    assert claim_problems(ran, encoder=False) == []
    assert manifest.validation.cases == DECODER_ONLY_CASES
