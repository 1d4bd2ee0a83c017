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

    MatMuls that read the same activation under the same Plan (q, k and v; gate and up) become
    one MatMulNBits on their weights side by side along N and a Split: one kernel call instead of
    several. Blocks run along K within each column, so the codes are those of each weight alone.

    Args:
        model: a graph with inferred shapes (value_info), changed in place.
        plan_of: callable (node, weight float32 (K, N)) -> Plan | None.
        block_size: values per block along K.
        accuracy_level: MatMulNBits' accuracy_level attribute.

    Returns:
        The number of MatMul nodes quantized.
    """
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    ranks = _ranks(graph)
    sums: dict[str, str] = {}  # activation -> its block sums (one per activation and block size)
    count, used = 0, set()
    for members, plan in _groups(graph, weights, plan_of):
        parts = [numpy_helper.to_array(weights[n.input[1]]) for n in members]
        weight = np.concatenate(parts, axis=1)  # (K, N): the members' weights side by side
        scheme = plan.scheme
        if scheme == "offset" and (weight.shape[0] % block_size or ranks.get(members[0].input[0]) is None):
            scheme = "asymmetric"
        blocks = quantize(weight, plan.bits, block_size, scheme)
        position = min(list(graph.node).index(n) for n in members)
        new_nodes = _replacement(graph, members, blocks, [p.shape[1] for p in parts], (block_size, accuracy_level))
        if blocks.offsets is not None:
            new_nodes = _with_offsets(graph, new_nodes, blocks, block_size, ranks, sums)
        used.update(n.input[1] for n in members)
        for node in members:
            graph.node.remove(node)
        for offset, new in enumerate(new_nodes):
            graph.node.insert(position + offset, new)
        count += len(members)
    still_read = {name for n in graph.node for name in n.input}
    for name in used - still_read:
        graph.initializer.remove(weights[name])
    if count and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return count


def _groups(graph, weights, plan_of) -> list[tuple[list, Plan]]:
    """The MatMuls to quantize, grouped by (activation, K, Plan), in graph order."""
    groups: dict[tuple, list] = {}
    for node in graph.node:
        init = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is None or len(init.dims) != 2 or init.data_type != onnx.TensorProto.FLOAT:
            continue
        plan = plan_of(node, numpy_helper.to_array(init))
        if plan is not None:
            groups.setdefault((node.input[0], init.dims[0], plan), []).append(node)
    return [(members, key[2]) for key, members in groups.items()]


def _replacement(graph, members: list, blocks: Blocks, widths: list[int], settings: tuple[int, int]) -> list:
    """[MatMulNBits, Split when several members] for `members`, initializers added to `graph`."""
    first = members[0]
    name = first.name or first.output[0]
    b, zero = packed(blocks)
    tensors = {f"{name}.qweight": b, f"{name}.scales": blocks.scales.reshape(-1)}
    if zero is not None:
        tensors[f"{name}.zero_points"] = zero
    graph.initializer.extend(numpy_helper.from_array(v, k_) for k_, v in tensors.items())
    result = first.output[0] if len(members) == 1 else f"{name}.packed"
    attrs = dict(K=blocks.k, N=sum(widths), bits=blocks.bits, block_size=settings[0], accuracy_level=settings[1])
    inputs = [first.input[0], *tensors]
    nodes = [helper.make_node("MatMulNBits", inputs, [result], name=name, domain=MS_DOMAIN, **attrs)]
    if len(members) > 1:  # (..., sum N) -> each member's (..., N_i)
        split = numpy_helper.from_array(np.asarray(widths, dtype=np.int64), f"{name}.split")
        graph.initializer.append(split)
        outputs = [m.output[0] for m in members]
        nodes.append(helper.make_node("Split", [result, split.name], outputs, name=f"{name}.split", axis=-1))
    return nodes


def _with_offsets(graph, nodes: list, blocks: Blocks, block_size: int, ranks, sums) -> list:
    """`nodes` with the offset term: MatMulNBits' output y becomes y + BlockSum(x) @ O."""
    kernel = nodes[0]
    source, name, result = kernel.input[0], kernel.name, kernel.output[0]
    kernel.output[0] = f"{name}.nbits"
    key = f"{source}@{block_size}"
    added = []
    if key not in sums:
        sums[key] = f"{source}.blocksum{block_size}"
        added = _block_sum(graph, source, sums[key], blocks.k // block_size, block_size, ranks)
    offsets = numpy_helper.from_array(np.ascontiguousarray(blocks.offsets.T), f"{name}.offsets")  # (nb, N)
    graph.initializer.append(offsets)
    terms = [
        helper.make_node("MatMul", [sums[key], offsets.name], [f"{name}.offset"], name=f"{name}.offset"),
        helper.make_node("Add", [kernel.output[0], f"{name}.offset"], [result], name=f"{name}.add_offset"),
    ]
    return [*added, kernel, *terms, *nodes[1:]]


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
