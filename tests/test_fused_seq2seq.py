"""`seqport export --attention fused` on encoder-decoder families: onnxruntime's
MultiHeadAttention against the portable graph.

Rows: the tiny reference Transformer of the session's `fresh_export` (the bundled translator's
architecture, pre-norm, 3 heads of 8; its portable artifact is shared with other tests), a tiny
T5 (relative position bias in the node's attention_bias, unscaled softmax, head size 10) and a
tiny BART (post-norm, 4 encoder heads of 7, 2 decoder heads of 14).
Each is exported portable and fused from one checkpoint. Greedy generation through the engine
on a padded batch of 3 must give the same ids from both, and teacher-forcing the portable
result through both decoders must give every step's logits within 1e-4; the fused graphs must
hold one MultiHeadAttention per attention and no Softmax.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_seq2seq import engine_logits  # noqa: E402

from seqport.engine.errors import ExportError  # noqa: E402

ATOL, MAX_NEW = 1e-4, 9
#: rows: "tiny" is conftest's fresh_export; "t5" and "bart" are test_hf_seq2seq's session exports
ROWS = ("bart", "t5", "tiny")


@pytest.fixture(scope="module", params=ROWS)
def pair(request, tmp_path_factory):
    """(row, portable engine model, fused engine model) from one checkpoint; the portable
    artifact is the one other tests already exported in this session."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp(f"fused-{request.param}")
    if request.param == "tiny":
        source, portable = request.getfixturevalue("fresh_export")
        portable_model = sp.load(portable)
    else:
        exported = request.getfixturevalue("exported")(request.param)
        source, portable_model = exported.hf, exported.engine
    export_model(source, root / "fused", progress=False, attention="fused")
    return request.param, portable_model, sp.load(root / "fused")


def _sources(model) -> tuple[np.ndarray, np.ndarray]:
    """Three right-padded sources of lengths 9, 4 and 6 from plain ids, ending with eos."""
    special = model.manifest.special_ids
    taken = {*special.eos, special.pad, special.bos, special.unk, special.decoder_start}
    plain = [i for i in range(model.manifest.vocab_size) if i not in taken]
    rng = np.random.default_rng(5)
    rows = [[*rng.choice(plain, size=n - 1), special.eos[0]] for n in (9, 4, 6)]
    ids = np.full((3, 9), special.pad or 0, dtype=np.int64)
    mask = np.zeros((3, 9), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    return ids, mask


def test_fused_and_portable_give_the_same_greedy_ids(pair):
    row, portable, fused = pair
    ids, mask = _sources(portable)
    lists = [list(map(int, r[m == 1])) for r, m in zip(ids, mask)]
    options = dict(max_new_tokens=MAX_NEW, num_beams=1, do_sample=False)
    expected, produced = portable.generate(lists, **options), fused.generate(lists, **options)
    assert [r.ids for r in produced] == [r.ids for r in expected]
    for ours, theirs in zip(produced, expected):
        np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=ATOL, rtol=0)
    generated = [tuple(r.ids) for r in expected]
    assert len(set(generated)) > 1 and any(len(set(g)) > 2 for g in generated), "outputs should vary"
    # every step's logits, teacher-forcing the portable result through both decoders
    start = np.full((3, 1), portable.manifest.special_ids.decoder_start)
    steps = min(len(g) for g in generated)
    sequences = np.concatenate([start, np.array([g[:steps] for g in generated])], axis=1)
    diff = np.abs(engine_logits(fused, ids, mask, sequences) - engine_logits(portable, ids, mask, sequences)).max()
    assert diff <= ATOL, f"{row}: max abs logits diff {diff:.3g}"


def test_fused_graphs_hold_multi_head_attention(pair):
    """One com.microsoft.MultiHeadAttention per attention (encoder self; decoder self and cross),
    no Softmax left; the portable graphs have no contrib op; the manifests say which."""
    import onnx

    row, portable, fused = pair
    layers = fused.manifest.kv.num_layers
    for name, model in (("portable", portable), ("fused", fused)):
        assert model.manifest.attention == name
        for component, attentions in (("encoder", None), ("decoder", 2 * layers)):
            graph = onnx.load(str(model.folder / f"{component}.onnx"), load_external_data=False).graph
            ops = Counter((node.domain, node.op_type) for node in graph.node)
            if name == "portable":
                assert not any(domain for domain, _ in ops) and ops[("", "Softmax")] > 0
                continue
            fused_ops = ops[("com.microsoft", "MultiHeadAttention")]
            assert ops[("", "Softmax")] == 0 and fused_ops > 0, f"{row} {component}"
            assert attentions is None or fused_ops == attentions, f"{row} {component}: {fused_ops}"


@pytest.mark.parametrize("pair", ["tiny"], indirect=True)
def test_fused_over_preallocated_buffers_equals_portable(pair, tmp_path):
    """--kv-cache preallocated --attention fused: the new K/V are scattered into the buffers (written
    in place through the engine's IOBinding) and the node reads them; same ids as portable."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    _, portable, _ = pair
    export_model(portable.manifest.provenance.source, tmp_path / "buffers", progress=False, attention="fused",
                 kv_cache="preallocated")  # fmt: skip
    fused = sp.load(tmp_path / "buffers")
    assert (fused.manifest.kv.allocation, fused.manifest.attention) == ("preallocated", "fused")
    ids, mask = _sources(portable)
    lists = [list(map(int, r[m == 1])) for r, m in zip(ids, mask)]
    expected, produced = portable.generate(lists, max_new_tokens=MAX_NEW), fused.generate(lists, max_new_tokens=MAX_NEW)
    assert [r.ids for r in produced] == [r.ids for r in expected]
    for ours, theirs in zip(produced, expected):
        np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=ATOL, rtol=0)


def test_fused_refusals_say_why():
    from seqport.export.attention_seq2seq import check_seq2seq_attention

    class OwnAdapter:  # your own encoder-decoder adapter, without the fused path
        pass

    with pytest.raises(ExportError, match=r"OwnAdapter has no fused attention \(encoder-decoder so far: .*portable"):
        check_seq2seq_attention(OwnAdapter(), "fused")
    with pytest.raises(ExportError, match=r"--attention must be one of portable, fused, got 'flash'"):
        check_seq2seq_attention(OwnAdapter(), "flash")
    check_seq2seq_attention(OwnAdapter(), "portable")


def test_fused_refused_for_declared_states(tmp_path):
    from seqport.engine.manifest import StateSpec
    from seqport.export.adapter import ModelSpec
    from seqport.export.seq2seq_graphs import export_decoder

    spec = ModelSpec("own", 10, 8, 1, 1, 1, 8, [2], states={"cell": StateSpec(["batch", 4])})
    with pytest.raises(ExportError, match=r"declared states or its own positions has no fused path.*portable"):
        export_decoder(object(), spec, tmp_path, attention="fused")


def test_fused_encoder_decoder_batches_continuously():
    """The bias carries each row's masked past slots, so continuous batching serves a fused
    encoder-decoder artifact; a fused decoder-only one (GroupQueryAttention) stays refused."""
    from seqport.serving.scheduler_choice import continuous_unsupported

    def model(architecture: str):
        kv = SimpleNamespace(allocation="growing")
        manifest = SimpleNamespace(architecture=architecture, kv=kv, attention="fused")
        return SimpleNamespace(manifest=manifest, row_positions=True)

    assert continuous_unsupported(model("encoder-decoder")) is None
    assert "takes no left-padded rows" in continuous_unsupported(model("decoder-only"))
