"""The skip audit (tests/skips.py): docs/testing.md lists the allowed skip reasons, and a run
that skips for any other reason fails, even when every test passed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from skips import DOC, documented_reasons

TESTS = Path(__file__).resolve().parent


def test_docs_list_the_optional_dependency_skips():
    allowed = documented_reasons(DOC.read_text(encoding="utf-8"))
    assert "could not import 'torch'" in allowed and "could not import 'transformers'" in allowed
    assert not any(reason.startswith(("engine lacks", "re-enable")) for reason in allowed)


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from skips import SkipAudit

        def pytest_configure(config):
            config.pluginmanager.register(SkipAudit(["could not import 'torch'"]), "audit")
        """)
    )
    (tmp_path / "test_it.py").write_text("import pytest\n\n" + textwrap.dedent(body))
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)]
    # the outer run's options (CI sets --basetemp there) must not reach the inner run: it would
    # empty the outer run's temporary folder, under the tests still running beside it
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)


def test_an_undocumented_skip_fails_the_run(tmp_path):
    run = _run(
        tmp_path,
        """
        def test_passes():
            pass

        def test_quiet():
            pytest.skip("engine lacks forced_bos_token_id; re-enable once the processor lands")
        """,
    )
    assert run.returncode == 1, run.stdout
    assert "UNDOCUMENTED SKIP test_it.py::test_quiet: engine lacks forced_bos_token_id" in run.stdout


def test_an_undocumented_module_skip_fails_the_run(tmp_path):
    run = _run(tmp_path, 'pytest.importorskip("no_such_module_17")\n\ndef test_never():\n    pass\n')
    assert run.returncode == 1, run.stdout
    assert "UNDOCUMENTED SKIP test_it.py: could not import 'no_such_module_17'" in run.stdout


def test_a_documented_skip_passes(tmp_path):
    run = _run(
        tmp_path,
        """
        def test_export():
            pytest.skip("could not import 'torch': No module named 'torch'")
        """,
    )
    assert run.returncode == 0, run.stdout
    assert "UNDOCUMENTED" not in run.stdout and "1 skipped" in run.stdout
