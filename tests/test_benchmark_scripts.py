"""Every script under benchmarks/ starts and answers --help: the scripts import each other
through sys.path (benchmarks/, benchmarks/peers/), and a helper moved between them breaks a
script that no other test runs (huge_pages.py imports llm_report, which imports peers/report)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))

pytestmark = pytest.mark.export  # the benchmark scripts run beside torch, as their peers do


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_answers_help(script):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
