"""README's speed section is generated from the committed benchmark results, never typed.

`python benchmarks/compare.py --render benchmarks/results/compare.json` rewrites compare.md with
report.markdown(); the committed compare.md must be what that prints today, and the README's
table and memory sentence must hold the figures of compare.json (issue #17). No timing is
measured here: speed claims stay in benchmarks, the tests only check that they are copied right.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"t5": "t5-small", "marian": "Marian en-de", "gpt2": "GPT-2"}  # compare.json name → README name
#: README columns, left to right: (system, variant) of compare.json records.
COLUMNS = [
    ("PyTorch eager", "pytorch", "eager"),
    ("Optimum fp32", "optimum", "fp32"),
    ("CTranslate2 fp32", "ctranslate2", "fp32"),
    ("seqport fp32", "seqport", "fp32"),
    ("CTranslate2 int8", "ctranslate2", "int8"),
    ("seqport int8", "seqport", "int8"),
]


@pytest.fixture(scope="module")
def results() -> tuple[dict, list[dict]]:
    document = json.loads((RESULTS / "compare.json").read_text(encoding="utf-8"))
    return document["meta"], document["records"]


def _report():
    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    try:
        import report
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "peers"))
    return report


def _readme_block(first_line_start: str) -> list[str]:
    """The README lines from the one starting with `first_line_start` to the next blank line."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_line_start))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return lines[start:end]


def speed_table(records: list[dict]) -> list[str]:
    """The README table: tokens/s per (model, batch) and system, from compare.json records."""
    ok = [r for r in records if r["status"] == "ok"]
    figures = {(r["model"], r["batch"], r["system"], r["variant"]): r["tokens_per_s"] for r in ok}
    lines = ["| model, batch | " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for model, name in MODELS.items():
        for batch in sorted({r["batch"] for r in records if r["model"] == model}):
            cells = [f"{figures[(model, batch, system, variant)]:.1f}" for _, system, variant in COLUMNS]
            lines.append(f"| {name}, {batch} | " + " | ".join(cells) + " |")
    return lines


def memory_sentence(records: list[dict]) -> str:
    """README's peak-RSS sentence: seqport fp32 / CTranslate2 fp32 per model and batch, and the ratio range."""
    rss = {(r["model"], r["batch"], r["system"]): r["peak_rss_mb"] for r in records if r["variant"] == "fp32"}
    pairs = {(m, b): (rss[(m, b, "seqport")], rss[(m, b, "ctranslate2")]) for m in MODELS for b in (1, 8)}
    ratios = [ours / theirs for ours, theirs in pairs.values()]

    def pair(model: str, batch: int) -> str:
        return "{:.0f} / {:.0f}".format(*pairs[(model, batch)])

    return (
        "Peak RSS, seqport fp32 / CTranslate2 fp32 (MiB): "
        f"t5-small {pair('t5', 1)} (batch 1) and {pair('t5', 8)} (batch 8); "
        f"Marian {pair('marian', 1)} and {pair('marian', 8)}; GPT-2 {pair('gpt2', 1)} and {pair('gpt2', 8)} — "
        f"{min(ratios):.2f}–{max(ratios):.2f}×."
    )


def test_committed_compare_md_is_what_render_prints(results):
    """compare.md == report.markdown() of compare.json, as `compare.py --render` writes it."""
    meta, records = results
    report = _report()
    report.add_ratios(records)
    assert (RESULTS / "compare.md").read_text(encoding="utf-8") == report.markdown(meta, records)


def test_readme_speed_table_is_generated_from_the_results(results):
    _, records = results
    expected = speed_table(records)
    assert _readme_block("| model, batch |") == expected, "README speed table:\n" + "\n".join(expected)


def test_readme_memory_figures_are_the_results(results):
    _, records = results
    found = " ".join(_readme_block("Peak RSS, seqport fp32"))
    assert found == memory_sentence(records)


def test_readme_speed_ratios_are_the_results(results):
    """The ratio ranges the README quotes (one decimal for eager/Optimum/int8, two for CTranslate2 fp32)."""
    _, records = results
    speed = {(r["model"], r["batch"], r["system"], r["variant"]): r["tokens_per_s"] for r in records}

    def span(system: str, variant: str, ours: str, batches: tuple[int, ...], digits: int) -> str:
        values = [speed[(m, b, "seqport", ours)] / speed[(m, b, system, variant)] for m in MODELS for b in batches]
        return f"{min(values):.{digits}f}–{max(values):.{digits}f}×"

    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    claims = [
        f"seqport fp32 is {span('pytorch', 'eager', 'fp32', (1,), 1)} PyTorch eager at batch 1",
        f"{span('optimum', 'fp32', 'fp32', (1, 8), 1)} Optimum",
        f"{span('ctranslate2', 'fp32', 'fp32', (1, 8), 2)} CTranslate2 fp32",
        f"is {span('ctranslate2', 'int8', 'int8', (1, 8), 1)} CTranslate2 int8",
    ]
    missing = [claim for claim in claims if claim not in text]
    assert not missing, f"README lacks (or states other figures than) {missing}"
    assert re.search(r"from \[benchmarks/results/compare\.md\]", text)
