"""export/blockwise.py and export/matmul_nbits.py on tiny tensors: weights that already lie on a
blockwise grid (a GGUF's Q4_1, Q4_0, Q8_0 dequantized to float) come back exactly; others get
round-to-nearest within half a step; MatMulNBits computes with what the quantizer says."""

from __future__ import annotations

import numpy as np
import pytest

from seqport.export.blockwise import quantize

K, N, BLOCK = 96, 10, 32  # three blocks along K


def _grid(rng, low: int, high: int, fp16: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Integer levels (K, N) in low..high with both ends used in every block, and a step per block."""
    levels = rng.integers(low, high + 1, size=(K, N))
    levels[0::BLOCK], levels[1::BLOCK] = low, high
    step = (rng.random((K // BLOCK, N)) * 0.02 + 1e-3).astype(np.float16 if fp16 else np.float32)
    return levels, np.repeat(step.astype(np.float32), BLOCK, axis=0)


def _q4_1(rng) -> np.ndarray:
    """llama.cpp Q4_1 dequantized: w = d q + m, q in 0..15, d and m float16 per block of 32."""
    q, d = _grid(rng, 0, 15)
    m = np.repeat((-rng.random((K // BLOCK, N)) * 0.1).astype(np.float16).astype(np.float32), BLOCK, axis=0)
    return (d * q + m).astype(np.float32)


def test_weights_on_a_4bit_grid_come_back_exactly():
    rng = np.random.default_rng(7)
    q4_1 = _q4_1(rng)
    q, d = _grid(rng, 0, 12)  # Q4_0 (w = d (q - 8)) whose blocks use only levels 0..12
    q4_0 = (d * (q - 8)).astype(np.float32)
    q, d = _grid(rng, -127, 127)
    q8_0 = (d * q).astype(np.float32)
    cases = [(q4_1, 4, "offset"), (q4_0, 4, "offset"), (q4_0, 4, "symmetric"), (q8_0, 8, "symmetric")]
    for weight, bits, scheme in cases:
        blocks = quantize(weight, bits, BLOCK, scheme)
        assert blocks.codes.shape == (N, K // BLOCK, BLOCK) and blocks.codes.max() < 2**bits
        np.testing.assert_allclose(blocks.dequantize(), weight, rtol=0, atol=1e-6 * np.abs(weight).max())
    # integer zero points cannot hold Q4_1's minimum: the error is a shift of up to half a step
    error = np.abs(quantize(q4_1, 4, BLOCK, "asymmetric").dequantize() - q4_1).max()
    assert error > 1e-4


def test_weights_off_any_grid_round_to_the_nearest_level():
    weight = np.random.default_rng(3).standard_normal((K, N)).astype(np.float32)
    blocks = weight.T.reshape(N, K // BLOCK, BLOCK)
    span = (blocks.max(-1) - blocks.min(-1)).T  # (nb, N)
    error = np.abs(quantize(weight, 4, BLOCK, "offset").dequantize() - weight)  # (K, N)
    assert np.all(error <= np.repeat(span / 15 / 2, BLOCK, axis=0) * (1 + 1e-5))
    assert error.max() > 1e-3  # it did quantize


@pytest.mark.parametrize("scheme", ["offset", "asymmetric", "symmetric"])
def test_matmulnbits_graph_computes_the_quantized_weight(scheme):
    """A MatMul on a (B, T, K) activation rewritten in place: onnxruntime's output equals x @ the
    dequantized weight (accuracy level 0, fp32 compute); two MatMuls of one activation become
    one MatMulNBits and a Split."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # the export extra: the runtime-only CI environment has no onnx
    from onnx import TensorProto, helper, numpy_helper

    from seqport.export.matmul_nbits import Plan, rewrite

    rng = np.random.default_rng(5)
    weight = _q4_1(rng)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "T", N]) for name in ("y", "z")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="a"), helper.make_node("MatMul", ["x", "w"], ["z"])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert rewrite(model, lambda node, w: Plan(4, scheme), BLOCK, accuracy_level=0) == 2
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("Split") == 1
    assert ops.count("ReduceSum") == int(scheme == "offset")
    assert "w" not in {init.name for init in model.graph.initializer}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 5, K)).astype(np.float32)
    y, z = session.run(None, {"x": x})
    expected = x @ quantize(weight, 4, BLOCK, scheme).dequantize()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(y, z)
    if scheme == "offset":  # exact: the grid came back
        np.testing.assert_allclose(y, x @ weight, rtol=1e-4, atol=1e-4)
