"""Build the tiny helper graphs the device loop runs next to a model (development time only).

The engine must not need the `onnx` package at run time, so these graphs are built once here
and shipped as package data; tests/test_device_graphs.py checks the shipped files are current.
Run from the repository root: python runtimes/graphs/build.py
"""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8
HERE = Path(__file__).resolve().parent
FLOATS = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
TAKE_DTYPES = {**FLOATS, "int64": TensorProto.INT64}


def select_graph(dtype: str) -> bytes:
    """logits (N, 1, V), k int64 (1,) → values float32 (N, k), ids int64 (N, k), lse float32 (N,)."""
    nodes = [
        helper.make_node("Squeeze", ["logits", "axis1"], ["raw"]),  # (N, V)
        helper.make_node("Cast", ["raw"], ["x"], to=TensorProto.FLOAT),  # fp16 logits: select in fp32
        helper.make_node("TopK", ["x", "k"], ["values", "ids"], axis=-1, largest=1, sorted=1),
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[-1], keepdims=1),  # (N, 1)
        helper.make_node("Sub", ["x", "m"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["e"]),
        helper.make_node("ReduceSum", ["e", "last"], ["s"], keepdims=0),  # (N,)
        helper.make_node("Log", ["s"], ["log_s"]),
        helper.make_node("Squeeze", ["m", "last"], ["m1"]),  # (N,)
        helper.make_node("Add", ["log_s", "m1"], ["lse"]),
    ]
    inits = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
    ]
    graph = helper.make_graph(
        nodes,
        "seqport_select",
        [
            helper.make_tensor_value_info("logits", FLOATS[dtype], ["N", 1, "V"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", "k"]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "k"]),
            helper.make_tensor_value_info("lse", TensorProto.FLOAT, ["N"]),
        ],
        inits,
    )
    return _serialise(graph)


def take_graph(dtype: str) -> bytes:
    """x (B, ...) and rows int64 (M,) → y = x[rows] (M, ...): one Gather (beam reorder, row drop)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "rows"], ["y"], axis=0)],
        "seqport_take",
        [
            helper.make_tensor_value_info("x", TAKE_DTYPES[dtype], None),
            helper.make_tensor_value_info("rows", TensorProto.INT64, ["M"]),
        ],
        [helper.make_tensor_value_info("y", TAKE_DTYPES[dtype], None)],
    )
    return _serialise(graph)


def zeros_graph(dtype: str) -> bytes:
    """shape int64 (R,) → y zeros of that shape: a preallocated KV buffer made on the device
    (uninitialised memory could hold NaN, which masking cannot hide: 0 * NaN is NaN)."""
    zero = helper.make_tensor("value", FLOATS[dtype], [1], [0.0])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"], value=zero)],
        "seqport_zeros",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, ["R"])],
        [helper.make_tensor_value_info("y", FLOATS[dtype], None)],
    )
    return _serialise(graph)


def _serialise(graph) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    model.producer_name = "seqport"
    return model.SerializeToString(deterministic=True)


def all_graphs() -> dict[str, bytes]:
    """File name → serialized model, for every graph the device loop may load."""
    graphs = {f"select_{d}.onnx": select_graph(d) for d in FLOATS}
    graphs.update({f"take_{d}.onnx": take_graph(d) for d in TAKE_DTYPES})
    graphs.update({f"zeros_{d}.onnx": zeros_graph(d) for d in FLOATS})
    return graphs


if __name__ == "__main__":
    for name, data in all_graphs().items():
        (HERE / name).write_bytes(data)
        print("wrote", HERE / name)
