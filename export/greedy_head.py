"""The greedy head: each row's argmax and its log-probability as decoder outputs (issue #16).

Plain greedy search needs two numbers per row from a step's (N, V) logits: the argmax and its
log-softmax. On the host those are four or five numpy calls after every decoder call, and on a
small model each costs more than its arithmetic (the decoder call has just evicted the CPU
caches; docs/benchmarks.md "Engine overhead"). Computed inside the graph, they come back with
the decoder's outputs and the engine's greedy step touches no (N, V) array:

    last      = Gather(logits, -1, axis=1)                  # (B, V), float32
    _, chosen = TopK(last, k=1, axis=-1)                    # (B, 1) int64, the first on ties
    greedy_ids      = Squeeze(chosen, -1)                   # (B,)
    greedy_logprobs = Squeeze(GatherElements(LogSoftmax(last), chosen), -1)   # (B,) float32

LogSoftmax, not ReduceMax − ReduceLogSumExp: onnxruntime's vectorised softmax kernel takes 15 µs
over SmolLM2's 49152 logits on one thread where the two reductions took 200 µs (a third of the
engine's whole step outside the call), and its float32 result is 20x closer to float64's (4e-6
against 7e-5; issue #16, docs/benchmarks.md). TopK with k=1, not ArgMax: onnxruntime's CPU
ArgMax is a scalar loop (40 µs over 49152 logits, 340 µs over 8 rows, where numpy's argmax
takes 3 and 26); TopK's k=1 path takes about 70 % of that, picks the same id on ties (ONNX:
the lower index first) and, like numpy's argmax and the host path, the NaN where a row holds one
(ArgMax skips it). Measured head alone, docs/benchmarks.md "The greedy head at batch 8".

**Blocked argmax** where the vocabulary is a multiple of BLOCK (SmolLM2's 49152 = 384 x 128):
TopK's k=1 scan is scalar too, while ReduceMax over a contiguous last axis is vectorised, so
the id is found in two stages over the (B, V / BLOCK, BLOCK) view of the row:

    block_max = ReduceMax(last, axis=2)                     # (B, V / BLOCK)
    _, block  = TopK(block_max, k=1)                        # (B, 1): the first block holding the max
    _, inner  = TopK(GatherElements(last, block), k=1)      # (B, 1, 1): the first max in that block
    chosen    = block * BLOCK + inner                       # (B, 1), the first id on ties, as above

The head alone over 8 rows of 49152 logits: 270 against 436 µs at one thread, 193 against
267 at two (minima of 300 calls); with the projection writing the logits itself
(export/quantize.py) an int4 SmolLM2 decode step at batch 8 and two threads 2–3 % faster
(docs/benchmarks.md "Eighth session", issue #16). The one difference from TopK over the whole row: ReduceMax skips
NaN, so a row holding a NaN may get another id; its log-probability is NaN either way
(LogSoftmax spreads it over the row), which the engine refuses, naming the row.

`logits` stays an output (sampling, beams and processors read it). The head is added to a
finished encoder-decoder or decoder-only decoder (after --optimize/--quantize/--dtype/--attention,
which rewrite the graphs) and checked against the decoder's own logits before the manifest names
it; an engine that does not know the two outputs ignores them, and an artifact without them
takes the engine's full-logits path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seqport.engine.errors import ExportError
from seqport.engine.manifest import Manifest, TensorSpec, sha256_of

#: logical (= graph) names of the head's outputs.
GREEDY_IDS, GREEDY_LOGPROBS = "greedy_ids", "greedy_logprobs"
HEAD_PREFIX = "seqport_greedy_head"  # node and value names: cannot clash with an exporter's
BLOCK = 128  # logits per block of the blocked argmax (module docstring)
_WITH_HEAD = ("encoder-decoder", "decoder-only")  # architectures whose `decoder` gets the head


def add_greedy_head(folder: Path, manifest: Manifest) -> Manifest:
    """Give the artifact's decoder the greedy head; returns the manifest naming its outputs.

    An artifact whose decoder already has them, or that is neither encoder-decoder nor
    decoder-only (an encoder-only model has no decoder), is returned as is.

    Raises:
        ExportError: the decoder has no logits output, or the head disagrees with its logits.
    """
    decoder = manifest.components.get("decoder")
    if manifest.architecture not in _WITH_HEAD or decoder is None or GREEDY_IDS in decoder.outputs:
        return manifest
    if "logits" not in decoder.outputs:
        raise ExportError("the greedy head needs the decoder's logits output; the manifest declares none")
    path = folder / decoder.file
    model = onnx.load(str(path), load_external_data=False)  # the weights stay where they are
    logits = decoder.outputs["logits"]
    append_head(model.graph, logits.name, logits.dtype, manifest.vocab_size)
    onnx.save(model, str(path))
    check_greedy_head(path, logits.name, manifest.vocab_size)
    batch = logits.shape[0]
    outputs = {
        **decoder.outputs,
        GREEDY_IDS: TensorSpec(GREEDY_IDS, "int64", [batch]),
        GREEDY_LOGPROBS: TensorSpec(GREEDY_LOGPROBS, "float32", [batch]),
    }
    component = dataclasses.replace(decoder, outputs=outputs, sha256=sha256_of(path))
    return dataclasses.replace(manifest, components={**manifest.components, "decoder": component})


def append_head(graph: onnx.GraphProto, logits: str, dtype: str, vocab_size: int | None = None) -> None:
    """The module docstring's nodes, reading graph output `logits` (B, L, V): the blocked argmax
    when `vocab_size` is a multiple of BLOCK (at least two blocks), TopK over the row otherwise."""
    name = f"{HEAD_PREFIX}.{{}}".format
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(-1, dtype=np.int64), name("last")),  # scalar: drops axis 1
            numpy_helper.from_array(np.array([-1], dtype=np.int64), name("axes")),
            numpy_helper.from_array(np.array([1], dtype=np.int64), name("k")),
        ]
    )
    nodes = [helper.make_node("Gather", [logits, name("last")], [name("row")], name=name("gather"), axis=1)]
    row = name("row")  # (B, V)
    if dtype != "float32":  # an fp16 graph: the log-probability in float32, as the host computes it
        nodes.append(helper.make_node("Cast", [row], [name("row32")], name=name("cast"), to=TensorProto.FLOAT))
        row = name("row32")
    chosen, logprobs = name("chosen"), name("logsoftmax")  # (B, 1) ids, (B, V) log-probabilities
    if vocab_size is not None and vocab_size % BLOCK == 0 and vocab_size >= 2 * BLOCK:
        nodes += _blocked_argmax(graph, row, chosen, vocab_size)
    else:
        nodes.append(helper.make_node("TopK", [row, name("k")], [name("top"), chosen], name=name("topk"), axis=-1))
    nodes += [
        helper.make_node("Squeeze", [chosen, name("axes")], [GREEDY_IDS], name=name("ids")),
        helper.make_node("LogSoftmax", [row], [logprobs], name=name("logsoftmax"), axis=-1),
        helper.make_node("GatherElements", [logprobs, chosen], [name("picked")], name=name("pick"), axis=-1),
        helper.make_node("Squeeze", [name("picked"), name("axes")], [GREEDY_LOGPROBS], name=name("logprob")),
    ]
    graph.node.extend(nodes)
    graph.output.extend(
        [
            helper.make_tensor_value_info(GREEDY_IDS, TensorProto.INT64, ["batch_size"]),
            helper.make_tensor_value_info(GREEDY_LOGPROBS, TensorProto.FLOAT, ["batch_size"]),
        ]
    )


def _blocked_argmax(graph: onnx.GraphProto, row: str, chosen: str, vocab_size: int) -> list[onnx.NodeProto]:
    """Nodes writing `chosen` (B, 1) int64, the first argmax of `row` (B, V), in two stages."""
    name = f"{HEAD_PREFIX}.block.{{}}".format
    constants = {
        "shape": [0, vocab_size // BLOCK, BLOCK],  # 0: keep B
        "axis2": [2],
        "size": BLOCK,
        "width": [1, 1, BLOCK],
    }
    graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), name(c)) for c, v in constants.items())
    k = f"{HEAD_PREFIX}.k"  # [1], append_head's
    return [
        helper.make_node("Reshape", [row, name("shape")], [name("rows")], name=name("rows")),  # (B, V/BLOCK, BLOCK)
        helper.make_node("ReduceMax", [name("rows"), name("axis2")], [name("max")], name=name("max"), keepdims=0),
        helper.make_node("TopK", [name("max"), k], [name("top"), name("index")], name=name("topk"), axis=-1),  # (B, 1)
        helper.make_node("Unsqueeze", [name("index"), name("axis2")], [name("index3")], name=name("unsqueeze")),
        helper.make_node("Expand", [name("index3"), name("width")], [name("gather_at")], name=name("expand")),
        helper.make_node("GatherElements", [name("rows"), name("gather_at")], [name("one")], name=name("one"), axis=1),
        helper.make_node("TopK", [name("one"), k], [name("one_top"), name("inner")], name=name("inner"), axis=-1),
        helper.make_node("Squeeze", [name("inner"), name("axis2")], [name("inner2")], name=name("squeeze")),  # (B, 1)
        helper.make_node("Mul", [name("index"), name("size")], [name("start")], name=name("start")),
        helper.make_node("Add", [name("start"), name("inner2")], [chosen], name=name("chosen")),
    ]


def check_greedy_head(path: Path, logits: str, vocab_size: int) -> None:
    """Run the head alone on made-up logits (ties and a -inf included) against numpy's argmax and
    log-softmax; the decoder's own parity was validated before the head was added.

    Raises:
        ExportError: the head's ids or log-probabilities disagree with numpy's.
    """
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    head = helper.make_graph(
        [n for n in model.graph.node if n.name.startswith(HEAD_PREFIX)],
        "greedy_head",
        [helper.make_tensor_value_info(logits, _elem_type(model.graph, logits), ["B", "L", vocab_size])],
        [o for o in model.graph.output if o.name in (GREEDY_IDS, GREEDY_LOGPROBS)],
        [i for i in model.graph.initializer if i.name.startswith(HEAD_PREFIX)],
    )
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    session = ort.InferenceSession(helper.make_model(head, opset_imports=opsets).SerializeToString())
    rng = np.random.default_rng(0)
    sample = rng.normal(0, 4, size=(3, 2, vocab_size)).astype(np.float32)  # (B, L, V)
    sample[1, -1, [3, 7]] = sample[1, -1].max() + 1  # a tie: the first id wins, as numpy's argmax
    sample[2, -1, 5] = -np.inf  # a forbidden token alone is fine
    feed = sample.astype(onnx.helper.tensor_dtype_to_np_dtype(_elem_type(model.graph, logits)))
    ids, logprobs = session.run([GREEDY_IDS, GREEDY_LOGPROBS], {logits: feed})
    last = feed[:, -1, :].astype(np.float64)  # (B, V)
    want = last.argmax(axis=-1)
    shifted = last - last.max(axis=-1, keepdims=True)
    want_lp = -np.log(np.exp(shifted).sum(axis=-1))
    if not np.array_equal(ids, want) or not np.allclose(logprobs, want_lp, atol=1e-4, rtol=1e-4):
        raise ExportError(
            f"the greedy head added to {path.name} disagrees with numpy: ids {ids.tolist()} vs {want.tolist()}, "
            f"log-probabilities {logprobs.tolist()} vs {want_lp.tolist()}; report this with the artifact"
        )


def _elem_type(graph: onnx.GraphProto, name: str) -> int:
    for value in graph.output:
        if value.name == name:
            return value.type.tensor_type.elem_type
    raise ExportError(f"the decoder graph has no output {name!r}")
