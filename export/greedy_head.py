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
    append_head(model.graph, logits.name, logits.dtype)
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


def append_head(graph: onnx.GraphProto, logits: str, dtype: str) -> None:
    """The module docstring's nodes, reading graph output `logits` (B, L, V)."""
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
    nodes += [
        helper.make_node("TopK", [row, name("k")], [name("top"), chosen], name=name("topk"), axis=-1),
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
