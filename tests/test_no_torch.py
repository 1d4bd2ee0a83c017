"""The engine must run where torch cannot be imported (STYLE.md §1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_engine_generates_without_importing_torch(tiny_artifact):
    code = textwrap.dedent(f"""
        import sys
        import seqport.engine as sp
        import seqport.runtimes.onnxruntime
        model = sp.load({str(tiny_artifact)!r})
        result = model.generate(["the cat sat on the mat"], max_new_tokens=4)
        assert len(result[0].ids) >= 1, result
        from seqport.cli.main import main
        assert main(["info", {str(tiny_artifact)!r}]) == 0
        banned = [m for m in ("torch", "transformers", "optimum", "seqport.export") if m in sys.modules]
        assert not banned, banned
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")


def test_python_dash_m_runs_the_cli(tiny_artifact):
    """`python -m seqport.cli` is the `seqport` command (the console script's module)."""
    run = subprocess.run(
        [sys.executable, "-m", "seqport.cli", "info", str(tiny_artifact)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert f"artifact: {tiny_artifact}" in run.stdout and "runtimes (RuntimeOptions.backend" in run.stdout
