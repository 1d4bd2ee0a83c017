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
    for name, data in _build_module().all_graphs().items():
        shipped = GRAPHS / name
        assert shipped.is_file(), f"{name} missing: run python runtimes/graphs/build.py"
        assert shipped.read_bytes() == data, f"{name} is stale: run python runtimes/graphs/build.py"


def test_shipped_graphs_compute_what_they_promise():
    """take = x[rows] for any rank; select = top-k values/ids and the row's log-sum-exp."""
    import numpy as np
    import onnxruntime as ort

    take = ort.InferenceSession((GRAPHS / "take_float32.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    x = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    rows = np.array([2, 0, 2], dtype=np.int64)
    np.testing.assert_array_equal(take.run(None, {"x": x, "rows": rows})[0], x[rows])
    select = ort.InferenceSession((GRAPHS / "select_float32.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    logits = np.array([[[0.5, 3.0, -1.0, 2.0]], [[1.0, 1.5, 4.0, 0.0]]], dtype=np.float32)  # (N, 1, V)
    values, ids, lse = select.run(None, {"logits": logits, "k": np.array([2], dtype=np.int64)})
    np.testing.assert_array_equal(ids, [[1, 3], [2, 1]])
    np.testing.assert_allclose(values, [[3.0, 2.0], [4.0, 1.5]])
    np.testing.assert_allclose(lse, np.log(np.exp(logits[:, 0]).sum(-1)), rtol=1e-6)
    zeros = ort.InferenceSession((GRAPHS / "zeros_float16.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    (made,) = zeros.run(None, {"shape": np.array([2, 3, 5, 4], dtype=np.int64)})
    assert made.shape == (2, 3, 5, 4) and made.dtype == np.float16 and not made.any()


def test_engine_device_code_does_not_import_onnx():
    source = (GRAPHS.parent / "ort_device.py").read_text()
    assert "import onnx\n" not in source and "from onnx " not in source
