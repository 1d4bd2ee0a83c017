"""The skips a test run may show are the ones docs/testing.md lists, nothing else (issue #17).

A skip where a failure belongs lets a regression go quiet, so every skip reason of a run is
compared with the "Skipped tests" list of docs/testing.md: a reason that starts with none of
the documented ones fails the run (exit status 1) and is named in the terminal summary.
tests/conftest.py registers `SkipAudit`; tests/test_skips.py shows that it fails a run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
HEADING = "## Skipped tests"


def documented_reasons(text: str) -> list[str]:
    """The reason prefixes of the doc's "Skipped tests" list: the `code` opening each item."""
    if HEADING not in text:
        raise ValueError(f"docs/testing.md has no {HEADING!r} section: the skip audit needs its list")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([^`]+)`", section, flags=re.MULTILINE)


def reason_of(report) -> str:
    """A skipped report's reason, as `pytest -rs` prints it."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")


class SkipAudit:
    """pytest plugin: collects skip reasons (collection and test skips), fails on undocumented ones."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed
        self.unexpected: list[tuple[str, str]] = []

    def _check(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = reason_of(report)
            if not any(reason.startswith(prefix) for prefix in self.allowed):
                self.unexpected.append((report.nodeid, reason))

    def pytest_collectreport(self, report) -> None:
        self._check(report)

    def pytest_runtest_logreport(self, report) -> None:
        self._check(report)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.unexpected and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.unexpected:
            terminalreporter.write_sep("=", "skips not listed in docs/testing.md (Skipped tests)", red=True)
            for nodeid, reason in self.unexpected:
                terminalreporter.write_line(f"UNDOCUMENTED SKIP {nodeid}: {reason}")
