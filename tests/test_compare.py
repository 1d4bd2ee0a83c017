"""benchmarks/compare.py --quick: the JSON and markdown have every field, seqport and PyTorch rows
are measured, and a peer that is not installed is a `skipped` row with its reason, not a failure.

Optimum is pointed at an interpreter that does not exist, so its skip path runs wherever the
test does (and the test stays short); CTranslate2 runs where it is installed and is a skipped
row where it is not. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.export
pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {
    "schema", "created", "system", "variant", "model", "shape", "batch", "input_tokens", "new_tokens", "threads",
    "warmup", "repeats", "interleaved", "cpu", "bound", "status", "note", "ratio_to_eager",
}  # fmt: skip
MEASURED = {
    "tokens_per_s", "ms_per_step", "generate_ms", "first_token_ms", "load_s", "import_s", "peak_rss_mb",
    "rss_after_load_mb", "versions", "rounds", "round_spread",
}  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("compare")
    command = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick", "--models", "t5,gpt2"]
    command += ["--batch-sizes", "1", "--new-tokens", "4", "--out", str(tmp / "out"), "--work", str(tmp / "work")]
    command += ["--optimum-python", str(tmp / "no-venv" / "bin" / "python")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "out" / "compare.json").read_text()), (tmp / "out" / "compare.md").read_text()


def test_json_has_meta_and_every_record_field(quick_run):
    document, _ = quick_run
    assert document["schema"] == "seqport.compare/1.1"
    meta = document["meta"]
    assert meta["bandwidth"]["gbs"] > 0 and "MB float32 array" in meta["bandwidth"]["method"]
    assert set(meta["models"]) == {"t5", "gpt2"}
    assert meta["models"]["t5"]["step_parameters"] < meta["models"]["t5"]["parameters"]
    for record in document["records"]:
        assert FIELDS <= set(record), FIELDS - set(record)
        assert (record["batch"], record["input_tokens"], record["new_tokens"], record["threads"]) == (1, 32, 4, 2)
        assert record["bound"]["tokens_per_s"] > 0 and record["bound"]["weight_bytes"] > 0
        if record["status"] == "ok":
            assert MEASURED <= set(record), MEASURED - set(record)
            assert record["tokens_per_s"] > 0 and record["peak_rss_mb"] > 0 and record["versions"]["python"]
            assert record["generate_ms"]["n"] == record["repeats"] == len(record["rounds"]) == 1
            assert record["interleaved"] and record["round_spread"]["spread_pct"] == 0
            assert len(record["load_average"]["rounds_start"]) == 3


def test_seqport_and_pytorch_rows_are_measured(quick_run):
    document, _ = quick_run
    measured = {(r["model"], r["system"], r["variant"]) for r in document["records"] if r["status"] == "ok"}
    for model in ("t5", "gpt2"):
        assert {(model, "seqport", "fp32"), (model, "pytorch", "eager")} <= measured
    eager = [r for r in document["records"] if r["system"] == "pytorch"]
    assert all(r["ratio_to_eager"] == 1.0 and r["ratio_to_eager_rounds"] == [1.0] for r in eager)
    assert all(r["versions"]["seqport"] for r in document["records"] if r["system"] == "seqport")


def test_missing_peers_are_skipped_with_a_reason(quick_run):
    document, text = quick_run
    records = document["records"]
    assert not [r for r in records if r["status"] == "failed"], [r["note"] for r in records]
    optimum = [r for r in records if r["system"] == "optimum"]
    assert len(optimum) == 2 and all(r["status"] == "skipped" and "setup-optimum-venv" in r["note"] for r in optimum)
    ct2 = [r for r in records if r["system"] == "ctranslate2"]
    assert {r["variant"] for r in ct2} == {"fp32", "int8"}
    assert all(r["status"] == "ok" or "not installed" in r["note"] for r in ct2)
    assert "**skipped**" in text


def test_markdown_has_tables_bandwidth_and_targets(quick_run):
    _, text = quick_run
    assert "GB/s" in text and "## t5" in text and "## gpt2" in text and "## Targets" in text
    assert "| system | variant | tokens/s | bound tokens/s | × eager |" in text
    tables = text.split("## Targets")[0]
    assert tables.count("| pytorch | eager |") == 2 and tables.count("| seqport | fp32 |") == 2
    assert "median of 1 interleaved rounds" in text and "## Rounds" in text and "| t5 | 1 | seqport | fp32 |" in text
