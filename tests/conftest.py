"""Shared fixtures. Engine tests use the committed tiny artifact and need no torch; tests
marked `export` build and export models and skip where torch is not installed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config) -> None:
    """Fail the run on a skip whose reason docs/testing.md does not list (tests/skips.py)."""
    from skips import DOC, SkipAudit, documented_reasons

    config.pluginmanager.register(SkipAudit(documented_reasons(DOC.read_text(encoding="utf-8"))), "seqport-skips")


@pytest.fixture(scope="session")
def tiny_artifact() -> Path:
    """Read-only tiny encoder-decoder artifact (tests/data/make_tiny.py)."""
    return DATA / "tiny_artifact"


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return DATA / "tiny_checkpoint"


@pytest.fixture
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A writable copy, for tests that break files on purpose."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))


@pytest.fixture(scope="session")
def model(tiny_artifact: Path):
    import seqport.engine as sp

    return sp.load(tiny_artifact)


@pytest.fixture(scope="session")
def fresh_export(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, artifact) exported in this session from a new seeded tiny model."""
    pytest.importorskip("torch")
    from tiny import write_tiny_checkpoint

    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("fresh")
    checkpoint = write_tiny_checkpoint(root / "checkpoint", seed=1)
    export_model(checkpoint, root / "artifact", progress=False)
    return checkpoint, root / "artifact"


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name -> test_hf_seq2seq's tiny HF encoder-decoder row, built and exported once per session
    (shared by every test module that needs one)."""
    pytest.importorskip("transformers")
    from test_hf_seq2seq import exporter

    return exporter(tmp_path_factory)
