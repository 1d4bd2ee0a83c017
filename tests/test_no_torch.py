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


def test_export_and_demo_say_what_to_install_without_torch():
    """Where the export side cannot be imported, the two commands that need it fail in one line."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = sys.modules["onnx"] = None  # as on a runtime-only install
        from seqport.cli.main import main
        assert main(["export", "checkpoint", "out"]) == 1
        assert main(["demo"]) == 1
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("seqport: error: `seqport export` needs the export extra: pip install 'seqport[export]'")
    assert lines[1].startswith("seqport: error: `seqport demo` needs the export extra (torch): pip install")
    assert all(line.endswith("is missing)") for line in lines)
