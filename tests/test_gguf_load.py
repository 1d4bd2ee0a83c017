"""export/gguf.py's tensor-by-tensor GGUF loading equals transformers' own, bit for bit, on a
tiny Llama GGUF written here (Q8_0 projections, whose q/k rows llama.cpp permutes; F32 norms)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")
np = pytest.importorskip("numpy")

D, FF, LAYERS, HEADS, KV_HEADS, VOCAB = 32, 64, 2, 4, 2, 64


def _write_tiny_llama(path) -> None:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(FF)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(D // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(VOCAB)])
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def q8(name: str, rows: int, cols: int) -> None:
        data = rng.standard_normal((rows, cols), dtype=np.float32)
        packed = gguf.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def f32(name: str, size: int) -> None:
        writer.add_tensor(name, (1 + 0.1 * rng.standard_normal(size)).astype(np.float32))

    q8("token_embd.weight", VOCAB, D)
    f32("output_norm.weight", D)
    head = D // HEADS
    for i in range(LAYERS):
        f32(f"blk.{i}.attn_norm.weight", D)
        f32(f"blk.{i}.ffn_norm.weight", D)
        q8(f"blk.{i}.attn_q.weight", D, D)
        q8(f"blk.{i}.attn_k.weight", KV_HEADS * head, D)
        q8(f"blk.{i}.attn_v.weight", KV_HEADS * head, D)
        q8(f"blk.{i}.attn_output.weight", D, D)
        q8(f"blk.{i}.ffn_gate.weight", FF, D)
        q8(f"blk.{i}.ffn_up.weight", FF, D)
        q8(f"blk.{i}.ffn_down.weight", D, FF)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_tensor_by_tensor_load_equals_transformers(tmp_path, monkeypatch):
    from seqport.export import gguf as seqport_gguf

    _write_tiny_llama(tmp_path / "tiny.gguf")
    monkeypatch.setattr(seqport_gguf, "CHUNK_ROWS", 5)  # several chunks, the last one short
    ours = seqport_gguf.load_model(tmp_path, "AutoModelForCausalLM", torch.float32)
    auto = transformers.AutoModelForCausalLM
    theirs = auto.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32)
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == ref.keys()
    assert [k for k in ref if mine[k].dtype != ref[k].dtype or not torch.equal(mine[k], ref[k])] == []
    buffers = dict(theirs.named_buffers())
    assert all(torch.equal(value, buffers[name]) for name, value in ours.named_buffers())
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()  # tied, as transformers ties
    assert ours.generation_config.to_dict() == theirs.generation_config.to_dict()
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
