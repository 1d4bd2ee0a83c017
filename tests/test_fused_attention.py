"""`seqport export --attention fused`: onnxruntime's GroupQueryAttention against the portable graph.

Families: GPT-2 (H_kv = H), Llama, Mistral, Qwen2.

Each row is a tiny seeded decoder-only model with a head size onnxruntime's kernel takes (a
multiple of 8), exported twice: portable and fused. Greedy generation through the engine on a
left-padded batch of 3 must give the same ids from both, with every step's logits within 1e-4,
and the fused graph must really hold one GroupQueryAttention node per layer and no Softmax.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_causal import CASES, LLAMA_STYLE, PROMPTS, VOCAB, Row, _generate, _tokenizer, _widen  # noqa: E402

from seqport.engine.errors import ExportError  # noqa: E402

ATOL, MAX_NEW = 1e-4, 10
#: the families with fused attention, at head sizes of 8 or 16 (test_hf_causal's rows use 10 and 12).
ROWS = {
    "gpt2": replace(CASES["gpt2"], config={**CASES["gpt2"].config, "n_embd": 48}),  # head 16, H_kv = H
    "llama": replace(CASES["llama"], config={**CASES["llama"].config, "head_dim": 8}),  # GQA 4:2, linear RoPE
    "mistral": CASES["mistral"],  # 40 / 5 heads = 8, GQA 5:1, sliding window 6
    "qwen2": replace(CASES["qwen2"], config={**CASES["qwen2"].config, "hidden_size": 48}),  # head 16, QKV bias
}


def _checkpoint(family: str, folder, row: Row):
    config = getattr(transformers, row.config_class)(vocab_size=VOCAB, **row.config)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    _widen(model, seed=7 + sorted(ROWS).index(family))
    model.save_pretrained(folder)
    _tokenizer(row.tokenizer).save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module", params=sorted(ROWS))
def pair(request, tmp_path_factory):
    """(family, portable engine model, fused engine model) from one checkpoint."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    family = request.param
    root = tmp_path_factory.mktemp(f"fused-{family}")
    checkpoint = _checkpoint(family, root / "checkpoint", ROWS[family])
    for mode in ("portable", "fused"):  # both growing (a fused decoder-only default is preallocated)
        export_model(checkpoint, root / mode, progress=False, attention=mode, kv_cache="growing")
    return family, sp.load(root / "portable"), sp.load(root / "fused")


def test_fused_and_portable_give_the_same_greedy_ids(pair):
    family, portable, fused = pair
    expected, batch, expected_steps = _generate(portable, PROMPTS, max_new_tokens=MAX_NEW)
    produced, fused_batch, produced_steps = _generate(fused, PROMPTS, max_new_tokens=MAX_NEW)
    assert fused_batch == batch and len({len(ids) for ids in batch}) > 1, "a left-padded batch"
    assert [r.ids for r in produced] == [r.ids for r in expected]
    assert len(produced_steps) == len(expected_steps)
    for step, ((sources, ours), (_, theirs)) in enumerate(zip(produced_steps, expected_steps)):
        diff = np.abs(ours - theirs).max()
        assert diff <= ATOL, f"{family} step {step} rows {sources}: max abs logits diff {diff:.3g}"
    generated = [tuple(r.ids) for r in expected]
    assert len(set(generated)) > 1 and any(len(set(ids)) > 2 for ids in generated), "outputs should vary"


def test_fused_graph_holds_group_query_attention(pair):
    """Meta-check: one com.microsoft GroupQueryAttention per layer over one packed QKV MatMul,
    sharing one set of length inputs, rotating Q and K itself (or a RotaryEmbedding per Q and K
    where its kernel cannot), the residual adds inside SkipSimplifiedLayerNormalization; no
    Softmax left; the portable graph has no contrib node; the manifests say which."""
    import onnx

    _, portable, fused = pair
    layers = fused.manifest.kv.num_layers
    ops = {}
    for name, model in (("portable", portable), ("fused", fused)):
        graph = onnx.load(str(model.folder / "decoder.onnx"), load_external_data=False).graph
        ops[name] = Counter((node.domain, node.op_type) for node in graph.node)
        assert model.manifest.attention == name
    assert ops["fused"][("com.microsoft", "GroupQueryAttention")] == layers
    gpt2, head_dim = fused.manifest.family == "gpt2", fused.manifest.kv.head_dim
    # RoPE: inside the node where its kernel takes the head size (a multiple of 16), else one
    # RotaryEmbedding per Q and K
    rope_nodes = 0 if gpt2 or head_dim % 16 == 0 else 2 * layers
    assert ops["fused"][("com.microsoft", "RotaryEmbedding")] == rope_nodes
    assert ops["fused"][("", "Softmax")] == 0 and ops["portable"][("", "Softmax")] == layers
    assert not any(domain for domain, _ in ops["portable"])
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len({n.input[0] for n in nodes}) == layers and len({n.input[5] for n in nodes}) == 1, "lengths once"
    rotary = {a.i for n in nodes for a in n.attribute if a.name == "do_rotary"}
    assert rotary == {int(not gpt2 and not rope_nodes)}
    if not gpt2:  # packed Q|K|V (the node's key/value inputs empty or rotated), residuals in the norms
        assert all(n.input[1] == "" for n in nodes) or rope_nodes
        assert ops["fused"][("com.microsoft", "SkipSimplifiedLayerNormalization")] == 2 * layers
        assert ops["fused"][("", "MatMul")] + ops["fused"][("", "Gemm")] == 5 * layers + 1  # QKV, O, MLP ×3; head


def _llama(**config):
    base = dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, intermediate_size=24, **LLAMA_STYLE)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=VOCAB, **{**base, **config}))


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda: _llama(head_dim=10), r"head size that is a multiple of 8, this model's is 10"),
        (lambda: None, r"OwnAdapter has no fused attention \(so far: GPT-2, Llama, Mistral, Qwen2\).*portable"),
    ],
)
def test_fused_attention_refusals_say_why(model, message):
    from seqport.export.attention import check_attention
    from seqport.export.llama import LlamaAdapter

    class OwnAdapter:  # an adapter without the fused path (an encoder-decoder family, or your own)
        def spec(self):
            return type("Spec", (), {"head_dim": 16})()

    hf = model()
    adapter = OwnAdapter() if hf is None else LlamaAdapter(hf)
    with pytest.raises(ExportError, match=message):
        check_attention(adapter, adapter.spec().head_dim, "fused")
    with pytest.raises(ExportError, match=r"--attention must be one of portable, fused, got 'flash'"):
        check_attention(adapter, adapter.spec().head_dim, "flash")


# every family, as it is their default: Mistral cuts the window with the buffer, Qwen2 (head 16)
# rotates inside the node over the buffer, GPT-2 has learned positions and H_kv = H
@pytest.mark.parametrize("pair", sorted(ROWS), indirect=True)
def test_fused_over_preallocated_buffers_equals_portable(pair, tmp_path):
    """--attention fused with the default --kv-cache (auto): preallocated buffers the node shares
    as past/present (written in place through the engine's IOBinding); same greedy ids and
    per-step logits as portable."""
    import onnx

    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    family, portable, _ = pair
    source = portable.manifest.provenance.source
    export_model(source, tmp_path / "buffers", progress=False, attention="fused")
    fused = sp.load(tmp_path / "buffers")
    assert (fused.manifest.kv.allocation, fused.manifest.attention) == ("preallocated", "fused")
    graph = onnx.load(str(tmp_path / "buffers" / "decoder.onnx"), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["GroupQueryAttention"] == fused.manifest.kv.num_layers and ops["ScatterElements"] == 0
    expected, _, expected_steps = _generate(portable, PROMPTS, max_new_tokens=MAX_NEW)
    produced, _, produced_steps = _generate(fused, PROMPTS, max_new_tokens=MAX_NEW)
    assert [r.ids for r in produced] == [r.ids for r in expected]
    for step, ((_, ours), (_, theirs)) in enumerate(zip(produced_steps, expected_steps)):
        assert np.abs(ours - theirs).max() <= ATOL, f"{family} step {step}"


class _Slots:  # a decoder-only adapter whose decode_step writes at cache_position
    def decode_step(self, input_ids, attention_mask, position_ids, past, cache_position=None): ...


class _NoSlots:  # one without (an own adapter that only concatenates)
    def decode_step(self, input_ids, attention_mask, position_ids, past): ...


@pytest.mark.parametrize(
    "adapter, decoder_only, attention, asked, expected",
    [
        (_Slots, True, "fused", "auto", "preallocated"),  # the fast path: no O(n²) copy
        (_Slots, True, "portable", "auto", "growing"),  # continuous batching needs it
        (_Slots, False, "fused", "auto", "growing"),  # encoder-decoder
        (_NoSlots, True, "fused", "auto", "growing"),  # nowhere to write
        (_Slots, True, "fused", "growing", "growing"),  # asked for: kept
        (_Slots, True, "portable", "preallocated", "preallocated"),
    ],
)
def test_kv_cache_auto_resolves_per_graph(adapter, decoder_only, attention, asked, expected):
    from seqport.export.seq2seq_graphs import resolve_allocation

    assert resolve_allocation(adapter(), asked, decoder_only, attention) == expected


def test_kv_cache_refusals_say_why():
    from seqport.export.seq2seq_graphs import resolve_allocation

    with pytest.raises(ExportError, match=r"_NoSlots.decode_step takes no cache_position.*kv_cache='growing'"):
        resolve_allocation(_NoSlots(), "preallocated", True, "fused")
    with pytest.raises(ExportError, match=r"kv_cache must be one of growing, preallocated, got 'paged'"):
        resolve_allocation(_Slots(), "paged", True, "fused")
