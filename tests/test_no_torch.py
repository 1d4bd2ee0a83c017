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
        from seqport.engine.cli import main
        assert main(["info", {str(tiny_artifact)!r}]) == 0
        banned = [m for m in ("torch", "transformers", "optimum") if m in sys.modules]
        assert not banned, banned
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")
