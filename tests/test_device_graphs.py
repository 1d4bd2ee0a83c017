"""The helper graphs shipped for the device loop are the ones runtimes/graphs/build.py builds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("onnx")  # building needs onnx; the engine only reads the shipped bytes

GRAPHS = Path(__file__).resolve().parents[1] / "runtimes" / "graphs"


def _build_module():
    spec = importlib.util.spec_from_file_location("seqport_graph_build", GRAPHS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_graphs_are_current():
    import onnx

    for name, data in _build_module().all_graphs().items():
        shipped = GRAPHS / name
        assert shipped.is_file(), f"{name} missing: run python runtimes/graphs/build.py"
        assert shipped.read_bytes() == data, f"{name} is stale: run python runtimes/graphs/build.py"
        onnx.checker.check_model(onnx.load_from_string(data))


def test_engine_device_code_does_not_import_onnx():
    source = (GRAPHS.parent / "ort_device.py").read_text()
    assert "import onnx\n" not in source and "from onnx " not in source
