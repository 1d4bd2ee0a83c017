"""`seqport export --quantize int4`: blockwise int4 weights through onnxruntime's MatMulNBits.

Tiny random models do not keep greedy agreement under int4 (the committed tiny translator
reaches about 0.77, the gate is 0.9), so the export tests lower the gate to see the artifact
load and generate; the gate itself is tested by raising it above what any model can reach.
"""

from __future__ import annotations

import functools
import shutil
from collections import Counter

import pytest

from seqport.engine.errors import ExportError, ParityError
from seqport.engine.manifest import load_manifest

onnx = pytest.importorskip("onnx")  # reading the quantized graphs; the export side needs it anyway


def _is_projection(node, vocab_size: int) -> bool:
    """The vocabulary product: MatMulNBits with N = V, or a float MatMul on the transposed tied table."""
    if node.op_type == "MatMulNBits":
        return any(a.name == "N" and a.i == vocab_size for a in node.attribute)
    return node.op_type == "MatMul" and node.input[1].endswith(".transposed")


def _ops(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.fixture(scope="module")
def llama_int4(tmp_path_factory):
    """A tiny Llama (head size 8, fused attention) exported with int4 weights, the vocabulary
    projection included and not: {projection: artifact folder}."""
    pytest.importorskip("torch")
    from test_fused_attention import ROWS, _checkpoint

    from seqport.export import int4
    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("int4")
    checkpoint = _checkpoint("llama", root / "checkpoint", ROWS["llama"])
    folders = {}
    with pytest.MonkeyPatch.context() as patch:  # tiny random models miss the 0.9 gate (module docstring)
        patch.setattr(int4, "quantize_int4_artifact", functools.partial(int4.quantize_int4_artifact, min_agreement=0.0))
        for projection in ("int4", "float"):
            folders[projection] = root / f"projection-{projection}"
            options = int4.Int4Options(block_size=16, projection=projection)
            export_model(
                checkpoint, folders[projection], progress=False, attention="fused", quantize="int4", int4=options
            )
    return folders


@pytest.mark.export
def test_int4_llama_loads_generates_and_holds_matmulnbits(llama_int4):
    import seqport.engine as sp

    for projection, folder in llama_int4.items():
        manifest = load_manifest(folder)
        q = manifest.quantization
        kept = "int4" if projection == "int4" else "float32"
        assert q.method == f"int4-blockwise block_size=16 accuracy_level=4 offset projection={kept}"
        assert 0.0 <= q.token_agreement <= 1.0 and q.candidates == {"int4": q.token_agreement}
        ops = _ops(folder / "decoder.onnx")
        # per layer packed qkv, o, gate, up, down; plus the vocabulary projection when it is included;
        # MatMuls of one activation share a MatMulNBits: qkv, o, (gate, up), down
        layers, head = manifest.kv.num_layers, int(projection == "int4")
        assert q.quantized_nodes["decoder"] == 5 * layers + head
        assert ops["MatMulNBits"] == 4 * layers + head and ops["Split"] >= layers
        assert ops["GroupQueryAttention"] == layers and manifest.attention == "fused"
        assert q.bytes["decoder"][1] < q.bytes["decoder"][0]
        # the projection reads the (B, K, d) rows and writes the logits output itself, no Reshapes around it
        graph = onnx.load(str(folder / "decoder.onnx"), load_external_data=False).graph
        producer = {out: n for n in graph.node for out in n.output}
        assert producer["logits"].op_type == ("Add" if projection == "int4" else "MatMul")  # Add: the offset term
        (vocab_product,) = [n for n in graph.node if _is_projection(n, manifest.vocab_size)]
        assert producer[vocab_product.input[0]].op_type != "Reshape"
        (result,) = sp.load(folder).generate(["the small red house"], max_new_tokens=6, min_new_tokens=6)
        assert len(result.ids) == 6


def test_int4_encoder_decoder_and_its_gate(tiny_artifact, tmp_path):
    """The committed tiny translator: int4 components load and generate; a gate above what they
    reach fails with the figure and leaves the folder as it was."""
    import seqport.engine as sp
    from seqport.export.int4 import Int4Options, quantize_int4_artifact

    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ParityError, match=r"int4 components \(int4-blockwise block_size=32 .*\) agree with fp32 on "
                       r"0\.\d+ of greedy tokens; the gate is 1\.01"):  # fmt: skip
        quantize_int4_artifact(folder, load_manifest(folder), min_agreement=1.01)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert not list(folder.glob(".quantize-*"))
    manifest = quantize_int4_artifact(folder, load_manifest(folder), Int4Options(accuracy_level=0), min_agreement=0.0)
    manifest.save(folder)
    assert manifest.quantization.quantized_nodes == {"encoder": 18, "decoder": 24}
    # MatMuls of one activation share a MatMulNBits: per encoder layer (q, k, v), o, fc1, fc2, and
    # the cross-attention k and v of all three decoder layers read the encoder's output (6 -> 1)
    assert _ops(folder / "encoder.onnx")["MatMulNBits"] == 2 * 4 + 1
    assert _ops(folder / "decoder.onnx")["MatMulNBits"] == 3 * 6  # (q, k, v), o, cross q, cross o, fc1, fc2
    (result,) = sp.load(folder).generate([[10, 11, 12, 2]], max_new_tokens=4, min_new_tokens=4)
    assert len(result.ids) == 4


def test_int4_options_are_checked_together():
    from seqport.export.int4 import Int4Options

    with pytest.raises(ExportError, match=r"--block-size must be a power of 2 >= 16, got 24; --accuracy-level must be"):
        Int4Options(block_size=24, accuracy_level=5)


def test_int4_options_need_quantize_int4(tmp_path):
    pytest.importorskip("torch")
    from seqport.export.int4 import Int4Options
    from seqport.export.pipeline import export_model

    with pytest.raises(ExportError, match="int4 options .* need --quantize int4"):
        export_model(tmp_path, tmp_path / "out", progress=False, quantize="int8", int4=Int4Options())
