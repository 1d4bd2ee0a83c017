"""Rewrite a graph's constant-weight MatMuls as onnxruntime's com.microsoft.MatMulNBits.

Every MatMul whose second input is a 2-D float32 initializer W (K, N) becomes MatMulNBits with
W quantized by export/blockwise.py. With the "offset" scheme each block also has a float offset
o (the exact block minimum, so a weight already on a 4-bit grid is reproduced), which the fast
kernels cannot take; the graph adds it as

    y = MatMulNBits(x) + BlockSum(x) @ O,   BlockSum(x): (..., K / bs), O: float32 (K / bs, N)

BlockSum is a Reshape (..., K / bs, bs) and a ReduceSum over the last axis, computed once per
activation however many MatMuls read it (q, k and v share theirs). O is 1/32 of W in float32 at
block 32, an eighth of the int4 bytes. A MatMul whose K is not a multiple of the block size, or
whose input rank is unknown, uses integer zero points ("asymmetric") instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from seqport.export.blockwise import Blocks, packed, quantize

MS_DOMAIN = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to quantize one kind of MatMul: bits (4 or 8), scheme (blockwise.SCHEMES)."""

    bits: int
    scheme: str


def rewrite(model: onnx.ModelProto, plan_of, block_size: int, accuracy_level: int) -> int:
    """Replace the MatMuls `plan_of(node, weight)` gives a Plan for (None: keep float) in place.

    Args:
        model: a graph with inferred shapes (value_info), changed in place.
        plan_of: callable (node, weight float32 (K, N)) -> Plan | None.
        block_size: values per block along K.
        accuracy_level: MatMulNBits' accuracy_level attribute.

    Returns:
        The number of MatMulNBits nodes written.
    """
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    ranks = _ranks(graph)
    sums: dict[str, str] = {}  # activation -> its block sums (one per activation and block size)
    count, used = 0, set()
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        init = weights[node.input[1]]
        if len(init.dims) != 2 or init.data_type != onnx.TensorProto.FLOAT:
            continue
        weight = numpy_helper.to_array(init)
        plan = plan_of(node, weight)
        if plan is None:
            continue
        scheme = plan.scheme
        if scheme == "offset" and (weight.shape[0] % block_size or ranks.get(node.input[0]) is None):
            scheme = "asymmetric"
        blocks = quantize(weight, plan.bits, block_size, scheme)
        position = list(graph.node).index(node)
        new_nodes = _replacement(graph, node, blocks, block_size, accuracy_level, ranks, sums)
        graph.node.remove(node)
        for offset, new in enumerate(new_nodes):
            graph.node.insert(position + offset, new)
        used.add(init.name)
        count += 1
    still_read = {name for n in graph.node for name in n.input}
    for name in used - still_read:
        graph.initializer.remove(weights[name])
    if count and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return count


def _replacement(graph, node, blocks: Blocks, block_size: int, accuracy_level: int, ranks, sums) -> list:
    """MatMulNBits for `node` (plus the offset term's nodes), its initializers added to `graph`."""
    name = node.name or node.output[0]
    b, zero = packed(blocks)
    k, n = blocks.k, blocks.scales.shape[0]
    tensors = {f"{name}.qweight": b, f"{name}.scales": blocks.scales.reshape(-1)}
    if zero is not None:
        tensors[f"{name}.zero_points"] = zero
    graph.initializer.extend(numpy_helper.from_array(v, k_) for k_, v in tensors.items())
    product = node.output[0] if blocks.offsets is None else f"{name}.nbits"
    inputs = [node.input[0], f"{name}.qweight", f"{name}.scales"] + list(tensors)[2:]
    attrs = dict(K=k, N=n, bits=blocks.bits, block_size=block_size, accuracy_level=accuracy_level)
    nodes = [helper.make_node("MatMulNBits", inputs, [product], name=name, domain=MS_DOMAIN, **attrs)]
    if blocks.offsets is None:
        return nodes
    key = f"{node.input[0]}@{block_size}"
    if key not in sums:
        sums[key] = f"{node.input[0]}.blocksum{block_size}"
        nodes = _block_sum(graph, node.input[0], sums[key], k // block_size, block_size, ranks) + nodes
    offsets = numpy_helper.from_array(np.ascontiguousarray(blocks.offsets.T), f"{name}.offsets")  # (nb, N)
    graph.initializer.append(offsets)
    nodes.append(helper.make_node("MatMul", [sums[key], offsets.name], [f"{name}.offset"], name=f"{name}.offset"))
    nodes.append(helper.make_node("Add", [product, f"{name}.offset"], [node.output[0]], name=f"{name}.add_offset"))
    return nodes


def _block_sum(graph, source: str, target: str, blocks: int, block_size: int, ranks) -> list:
    """(..., K) -> (..., K / bs): Reshape to (..., K / bs, bs), ReduceSum over the last axis."""
    shape = numpy_helper.from_array(np.asarray([0] * (ranks[source] - 1) + [blocks, block_size]), f"{target}.shape")
    axes = numpy_helper.from_array(np.asarray([-1], dtype=np.int64), f"{target}.axes")
    graph.initializer.extend([shape, axes])
    return [
        helper.make_node("Reshape", [source, shape.name], [f"{target}.blocks"], name=f"{target}.reshape"),
        helper.make_node("ReduceSum", [f"{target}.blocks", axes.name], [target], name=target, keepdims=0),
    ]


def _ranks(graph) -> dict[str, int]:
    """Tensor name -> rank, where the graph's inputs or inferred value_info know it."""
    ranks = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    return ranks
