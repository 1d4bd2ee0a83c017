"""`seqport export --quantize int8`: dynamic int8 weights, gated on greedy token agreement.

onnxruntime's quantize_dynamic stores the weights of every MatMul with a constant weight as
int8 and quantizes activations at run time (MatMulInteger). fp32 logit tolerances cannot hold
for int8, so the re-validation compares the int8 components with the fp32 ones on a fixed set
of inputs: the fraction of target positions where int8 picks fp32's greedy token (teacher-forced
on fp32's output, so one early difference does not count twice) is the gate, MIN_AGREEMENT by
default; the largest logit difference and the rate of identical free-running outputs are
recorded as information. Per-tensor and per-channel weight scales are both tried and the one
with the higher agreement is kept ("per-channel where it helps").

Graph inputs and outputs keep their names and float32 types: the contract is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from seqport.engine.api import load
from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ExportError, ParityError
from seqport.engine.manifest import Manifest, Quantization, sha256_of

logger = logging.getLogger(__name__)

#: the gate: fraction of teacher-forced positions where int8 and fp32 pick the same token.
MIN_AGREEMENT = 0.9
OP_TYPES = ["MatMul"]  # Gather (embeddings) stays fp32: the tied table also feeds the logits MatMul
NEW_TOKENS = 24
#: the fixed inputs: plain English of varied length (sources or prompts, per architecture).
SENTENCES = [
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "I would like a cup of coffee with milk, please.",
    "The meeting has been moved to Thursday afternoon.",
    "Numbers: one, two, three, four, five.",
    "She opened the window and the cold air came in.",
    "Please send me the report before the end of the week.",
    "The river flows slowly through the old town.",
    "How much does this book cost?",
    "They have lived in this house for twenty years.",
    "Good morning!",
    "The children were playing in the garden while their parents talked about the weather.",
    "It is raining again.",
    "We need to buy bread, eggs and cheese.",
    "The museum is closed on Mondays.",
    "Can you help me translate this sentence?",
]


@dataclasses.dataclass(frozen=True)
class Figures:
    """int8 against fp32 on the fixed inputs."""

    token_agreement: float
    sequence_match: float
    max_abs_diff: dict[str, dict[str, float]]


def quantize_artifact(folder: Path, manifest: Manifest, min_agreement: float = MIN_AGREEMENT) -> Manifest:
    """Replace every component in `folder` by its int8 version once it passes the gate.

    Args:
        folder: the artifact folder holding the fp32 (or fused) components.
        manifest: that artifact's manifest (the file itself need not be saved yet).
        min_agreement: the token agreement the int8 components must reach.

    Returns:
        The manifest with the int8 components' hashes and a `quantization` section.

    Raises:
        ExportError: the architecture has no agreement check yet, or quantization failed.
        ParityError: the int8 components agree with fp32 on fewer tokens than min_agreement.
    """
    if manifest.architecture not in ("encoder-decoder", "decoder-only"):
        raise ExportError(
            f"--quantize int8 is validated by greedy token agreement, which a {manifest.architecture} "
            "artifact does not generate; export it without --quantize"
        )
    stage = Path(tempfile.mkdtemp(prefix=".quantize-", dir=folder))
    try:
        tried = _candidates(folder, manifest, stage)
        best = max(tried.values(), key=lambda c: (c.figures.token_agreement, -_logit_diff(c.figures)))
        agreement = best.figures.token_agreement
        if agreement < min_agreement:
            each = ", ".join(f"{label} {c.figures.token_agreement:.3f}" for label, c in tried.items())
            raise ParityError(
                f"int8 components agree with fp32 on {agreement:.3f} of greedy tokens ({each}); the gate "
                f"is {min_agreement:g}. Keep this model in fp32 (export without --quantize)."
            )
        sizes = {
            n: [(folder / c.file).stat().st_size, best.files[n].stat().st_size] for n, c in manifest.components.items()
        }
        for name, path in best.files.items():
            os.replace(path, folder / manifest.components[name].file)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    candidates = {label: c.figures.token_agreement for label, c in tried.items()}
    record = gate_record("dynamic-int8", best.per_channel, list(OP_TYPES), best.nodes, best.figures, min_agreement)
    record = dataclasses.replace(record, candidates={k: round(v, 6) for k, v in candidates.items()}, bytes=sizes)
    return dataclasses.replace(best.manifest, quantization=record)


@dataclasses.dataclass(frozen=True)
class _Candidate:
    per_channel: bool
    files: dict[str, Path]  # component -> int8 file in the staging folder
    nodes: dict[str, int]
    manifest: Manifest  # with the int8 files' hashes
    figures: Figures


def _candidates(folder: Path, manifest: Manifest, stage: Path) -> dict[str, _Candidate]:
    """Per-tensor and per-channel int8 versions, each measured against the fp32 components."""
    reference = load(_stage(folder, manifest, stage / "fp32", {}))
    sources = _fit(reference.input_ids(SENTENCES), manifest)
    prepared = _prepared(folder, manifest, stage / "prepared")
    tried = {}
    for per_channel in (False, True):
        label = "per_channel" if per_channel else "per_tensor"
        files, nodes = _quantize_files(prepared, manifest, stage / label, per_channel)
        quantized = _with_files(manifest, files)
        candidate = load(_stage(folder, quantized, stage / label, files))
        tried[label] = _Candidate(per_channel, files, nodes, quantized, _figures(reference, candidate, sources))
    return tried


def _prepared(folder: Path, manifest: Manifest, out: Path) -> dict[str, Path]:
    """Each component with ONNX-inferred shapes and types (onnxruntime's quantization
    pre-processing without graph optimization, so the nodes stay the validated ones, and without
    symbolic shape inference, which gives up on symbolic past lengths and then leaves
    sym_shape_infer_temp.onnx in the working directory)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.mkdir(parents=True)
    prepared = {}
    for name, component in manifest.components.items():
        source, target = folder / component.file, out / component.file
        try:
            quant_pre_process(str(source), str(target), skip_optimization=True, skip_symbolic_shape=True)
            prepared[name] = target
        except Exception as exc:  # symbolic shape inference gives up on some graphs: not fatal
            logger.info("shape inference failed on %s (%s); quantizing it as exported", component.file, exc)
            shutil.copyfile(source, target)
            prepared[name] = target
        _projections_as_matmul(target)
    return prepared


def _projections_as_matmul(path: Path) -> None:
    """Rewrite each Gemm(transB=1) on a constant weight W (V, d) as MatMul(x, W^T) with its own
    transposed copy, so quantize_dynamic stores that copy in int8 (it quantizes only MatMul
    weights in the B position). This is the vocabulary projection: fp32 it reads the tied
    embedding table in place (export/adapter.py tied_projection); int8 it would otherwise stay
    the largest fp32 read of every step, while the table itself stays fp32 for the token Gather."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    changed = False
    for node in list(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attrs.get("transB") != 1 or attrs.get("transA", 0) or node.input[1] not in weights:
            continue
        if attrs.get("alpha", 1.0) != 1.0 or (len(node.input) > 2 and node.input[2] and attrs.get("beta", 1.0) != 1.0):
            continue
        table = numpy_helper.to_array(weights[node.input[1]])
        transposed = numpy_helper.from_array(np.ascontiguousarray(table.T), f"{node.input[1]}.transposed")
        graph.initializer.append(transposed)
        product = node.output[0] + ".matmul" if len(node.input) > 2 and node.input[2] else node.output[0]
        replacement = [helper.make_node("MatMul", [node.input[0], transposed.name], [product], name=node.name)]
        if product != node.output[0]:
            replacement.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(position + offset, new)
        if len(replacement) == 1:
            _unflatten(graph, graph.node[position])  # the graph's copy of the MatMul
        changed = True
    if changed:
        onnx.save(model, str(path))


def _unflatten(graph: onnx.GraphProto, matmul: onnx.NodeProto) -> None:
    """Drop the Reshapes around a projection MatMul: tied_projection flattens hidden (B, K, d) to
    (B·K, d) for Gemm, which needs 2-D rows, and reshapes the product back to (B, K, V); MatMul
    (and the MatMulNBits or int8 MatMul it becomes) takes (B, K, d) itself, and the Reshape back
    was a copy of the whole (B, K, V) logits every step (1.5 MB for SmolLM2 at batch 8, issue
    #16). Only where the exporter's shapes prove it: x and the result share their leading (B, K)
    dims."""
    producers = {out: n for n in graph.node for out in n.output}
    readers = [n for n in graph.node if matmul.output[0] in n.input]
    flatten = producers.get(matmul.input[0])
    if flatten is None or flatten.op_type != "Reshape" or len(readers) != 1 or readers[0].op_type != "Reshape":
        return
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in _typed(graph)}
    hidden, logits = dims.get(flatten.input[0]), dims.get(readers[0].output[0])
    if not hidden or not logits or len(hidden) != 3 or len(logits) != 3 or hidden[:2] != logits[:2] or 0 in hidden[:2]:
        return
    matmul.input[0], matmul.output[0] = flatten.input[0], readers[0].output[0]  # (B, K, d) -> (B, K, V)
    graph.node.remove(readers[0])
    _drop_unread(graph, [flatten, producers.get(readers[0].input[1])])


def _drop_unread(graph: onnx.GraphProto, nodes: list) -> None:
    """Remove `nodes` whose outputs nothing reads any more, then their producers (and constants)
    the same way."""
    outputs, freed = {o.name for o in graph.output}, set()
    while nodes:
        node = nodes.pop()
        if node is None or node not in graph.node:
            continue
        if any(out in outputs or any(out in n.input for n in graph.node) for out in node.output):
            continue
        graph.node.remove(node)
        freed.update(node.input)
        nodes += [n for n in graph.node if set(n.output) & set(node.input)]
    read = {name for n in graph.node for name in n.input}
    for constant in [i for i in graph.initializer if i.name in freed and i.name not in read]:
        graph.initializer.remove(constant)


def _typed(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    return [*graph.input, *graph.value_info, *graph.output]


def _quantize_files(sources: dict[str, Path], manifest: Manifest, out: Path, per_channel: bool):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True)
    files, nodes = {}, {}
    for name, component in manifest.components.items():
        target = out / component.file
        try:
            quantize_dynamic(
                sources[name],
                target,
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=OP_TYPES,
                # a fused contrib operator's output may still lack a type: it is float
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:  # the quantizer raises many types on graphs it cannot handle
            raise ExportError(f"onnxruntime could not quantize {component.file}: {exc}") from exc
        ops = Counter(node.op_type for node in onnx.load(str(target), load_external_data=False).graph.node)
        files[name], nodes[name] = target, ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"]
    return files, nodes


def _with_files(manifest: Manifest, files: dict[str, Path]) -> Manifest:
    components = {
        name: dataclasses.replace(c, sha256=sha256_of(files[name]), data=None) if name in files else c
        for name, c in manifest.components.items()
    }
    return dataclasses.replace(manifest, components=components)


def _stage(folder: Path, manifest: Manifest, out: Path, files: dict[str, Path]) -> Path:
    """A loadable artifact in `out`: the given files, the others linked from `folder`."""
    out.mkdir(parents=True, exist_ok=True)
    kept = [c for n, c in manifest.components.items() if n not in files]
    names = [c.file for c in kept] + [c.data.file for c in kept if c.data] + [manifest.tokenizer.file]
    if manifest.tokenizer.chat_template:  # the engine's load reads it
        names.append(manifest.tokenizer.chat_template)
    if manifest.shared_weights is not None:  # graphs of an externalized artifact point into it
        names.append(manifest.shared_weights.file)
    for name in names:
        try:
            os.link(folder / name, out / name)
        except OSError:  # no hard links on this file system
            shutil.copyfile(folder / name, out / name)
    manifest.save(out)
    return out


def _fit(sources: list[list[int]], manifest: Manifest) -> list[list[int]]:
    """Cut inputs to the model's positions (an encoder-decoder source keeps its final special token)."""
    if manifest.architecture == "decoder-only":
        limit = max(1, manifest.max_positions - NEW_TOKENS)  # the prompt leaves room to generate
        return [ids[:limit] for ids in sources]
    limit = manifest.max_positions
    return [ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:] for ids in sources]


def _logit_diff(figures: Figures) -> float:
    return max((d for table in figures.max_abs_diff.values() for d in table.values()), default=0.0)


def _figures(reference, candidate, sources: list[list[int]]) -> Figures:
    config = GenerationConfig(max_new_tokens=NEW_TOKENS)
    expected = reference.generate_ids(sources, config)
    produced = candidate.generate_ids(sources, config)
    eos = reference.manifest.special_ids.eos[0]
    same = total = 0
    worst: dict[str, dict[str, float]] = {}
    for ids, want in zip(sources, expected):
        seq = want.sequences[0]
        target = list(seq.ids) + ([eos] if seq.finish_reason == "eos" else [])
        ours, theirs = _teacher_forced(candidate, ids, target), _teacher_forced(reference, ids, target)
        for name, value in ours.items():
            table = worst.setdefault("encoder" if name == "encoder_hidden_states" else "decoder", {})
            diff = float(np.max(np.abs(value.astype(np.float64) - theirs[name]))) if value.size else 0.0
            table[name] = max(table.get(name, 0.0), round(diff, 6))
        same += int(np.sum(ours["logits"].argmax(-1) == theirs["logits"].argmax(-1)))
        total += len(target)
    matches = sum(a.sequences[0].ids == b.sequences[0].ids for a, b in zip(expected, produced))
    return Figures(same / max(total, 1), matches / len(sources), worst)


def _teacher_forced(model, ids: list[int], target: list[int]) -> dict[str, np.ndarray]:
    """Logits (T, V) for each target position given the previous target tokens (one call)."""
    m = model.manifest
    source = np.asarray([ids], dtype=np.int64)  # (1, S)
    if m.architecture == "encoder-decoder":
        mask = np.ones_like(source)
        encoded = model.run("encoder", {"input_ids": source, "attention_mask": mask})
        start = m.special_ids.decoder_start if m.special_ids.decoder_start is not None else (m.special_ids.bos or 0)
        tokens = np.asarray([[start] + target[:-1]], dtype=np.int64)  # (1, T)
        values = {k: v for k, v in encoded.items() if k.startswith("cross_")}
        values.update(input_ids=tokens, encoder_attention_mask=mask, logits_positions=np.arange(len(target)))
        out = model.run_decoder(values, model.new_cache(1, tokens.shape[1]))
        return {"encoder_hidden_states": encoded["encoder_hidden_states"][0], "logits": out["logits"][0]}
    tokens = np.asarray([ids + target[:-1]], dtype=np.int64)  # (1, L + T - 1): prompt, then target
    length = tokens.shape[1]
    values = dict(
        input_ids=tokens,
        attention_mask=np.ones_like(tokens),
        position_ids=np.arange(length, dtype=np.int64)[None, :],
        logits_positions=np.arange(len(ids) - 1, length, dtype=np.int64),
    )
    return {"logits": model.run_decoder(values, model.new_cache(1, length))["logits"][0]}


def gate_record(
    method: str, per_channel: bool, op_types: list[str], nodes, figures, min_agreement: float
) -> Quantization:
    """The manifest's record of a reduced-precision export gated on greedy agreement with fp32
    (int8 here, int4 in int4.py, fp16 in fp16.py): the gate's figures on SENTENCES.

    `candidates` holds this method's own agreement and `bytes` is empty; callers replace them
    when they tried several candidates or measured the files.
    """
    return Quantization(
        method=method,
        per_channel=per_channel,
        op_types=op_types,
        quantized_nodes=nodes,
        token_agreement=round(figures.token_agreement, 6),
        min_agreement=min_agreement,
        sequence_match=round(figures.sequence_match, 6),
        candidates={method: round(figures.token_agreement, 6)},
        max_abs_diff=figures.max_abs_diff,
        inputs=f"{len(SENTENCES)} fixed English sentences (seqport.export.quantize.SENTENCES), greedy, "
        f"up to {NEW_TOKENS} new tokens",
    )
