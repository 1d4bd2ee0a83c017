"""The benchmarked model shapes, and building each as a random-weight HuggingFace folder.

Stdlib only at import time (compare.py reads SHAPES without torch); `build_hf_folder` imports
torch and transformers. Shapes follow the real checkpoints:

  t5      T5Config() defaults = t5-small: d_model 512, d_ff 2048, 6+6 layers, 8 heads, vocab 32128.
  marian  opus-mt-en-de: d_model 512, ffn 2048, 6+6 layers, 8 heads, vocab 58101, swish,
          scale_embedding (MarianConfig() defaults are a larger model: every field is set).
  gpt2    GPT2Config() defaults = GPT-2 small: 768-d, 12 layers, 12 heads, vocab 50257.

`quick` shapes are tiny versions for tests. The tokenizer is a WordLevel vocabulary with one
token per model id (the special tokens at the model's ids), so every system's vocabulary maps
ids to tokens one to one and the suite feeds the same ids to all of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARIAN_FULL = dict(
    d_model=512,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    vocab_size=58101,
    activation_function="swish",
    scale_embedding=True,
    max_position_embeddings=512,
)
MARIAN_IDS = dict(eos_token_id=0, forced_eos_token_id=None)

#: name -> (config class, architecture, full config, quick config). Marian's pad = its last id.
SHAPES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "t5": (
        "T5Config",
        "encoder-decoder",
        dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, vocab_size=32128),
        dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=160),
    ),
    "marian": (
        "MarianConfig",
        "encoder-decoder",
        MARIAN_FULL,
        {
            **MARIAN_FULL,
            **dict(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2),
            **dict(encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=161, max_position_embeddings=128),
        },
    ),
    "gpt2": (
        "GPT2Config",
        "decoder-only",
        dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
        dict(n_embd=32, n_layer=2, n_head=4, vocab_size=160, n_positions=128),
    ),
}


def config_kwargs(name: str, quick: bool) -> dict[str, Any]:
    """The config fields of shape `name`, special ids included."""
    _, _, full, tiny = SHAPES[name]
    kwargs = dict(tiny if quick else full)
    vocab = kwargs["vocab_size"]
    if name == "marian":
        kwargs.update(MARIAN_IDS, pad_token_id=vocab - 1, decoder_start_token_id=vocab - 1)
    elif name == "t5":
        kwargs.update(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    else:
        kwargs.update(bos_token_id=vocab - 1, eos_token_id=vocab - 1)  # <|endoftext|>: GPT-2's last id
    return kwargs


def special_tokens(name: str, vocab: int) -> dict[str, tuple[int, str]]:
    """role -> (id, token) of each special token, at the ids the model's config uses."""
    if name == "t5":
        return {"pad": (0, "<pad>"), "eos": (1, "</s>"), "unk": (2, "<unk>")}
    if name == "marian":
        return {"eos": (0, "</s>"), "unk": (1, "<unk>"), "pad": (vocab - 1, "<pad>")}
    return {role: (vocab - 1, "<|endoftext|>") for role in ("bos", "eos", "unk")}


def token_range(name: str, vocab: int) -> tuple[int, int]:
    """[low, high) of ordinary ids: above or below every special id."""
    ids = [i for i, _ in special_tokens(name, vocab).values()]
    low = max((i for i in ids if i < vocab // 2), default=-1) + 1
    high = min((i for i in ids if i >= vocab // 2), default=vocab)
    return low, high


def _tokenizer(name: str, vocab: int, architecture: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = special_tokens(name, vocab)
    names = {i: token for i, token in specials.values()}
    table = {names.get(i, f"w{i}"): i for i in range(vocab)}  # one token per id
    tok = Tokenizer(models.WordLevel(table, unk_token=specials["unk"][1]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(sorted(set(names.values())))
    if architecture == "encoder-decoder":  # sources end with EOS, as the real tokenizers do
        eos_id, eos = specials["eos"]
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, eos_id)])
    return tok, {f"{role}_token": token for role, (_, token) in specials.items()}


def step_params(model, architecture: str) -> int:
    """Weights one decode step reads: decoder layers (not the cross-attention K/V projections,
    applied once to the encoder output), final norm, output projection; not the embedding tables,
    of which a step reads one row."""
    skip = ("embed", "wte", "wpe", "shared", "EncDecAttention.k.", "EncDecAttention.v.")
    skip += ("encoder_attn.k_proj", "encoder_attn.v_proj")
    prefix = "transformer." if architecture == "decoder-only" else ("decoder.", "model.decoder.")
    read = [p.numel() for n, p in model.named_parameters() if n.startswith(prefix) and not any(s in n for s in skip)]
    return sum(read) + model.get_output_embeddings().weight.numel()


def build_hf_folder(name: str, quick: bool, folder: Path, seed: int = 0) -> dict[str, Any]:
    """save_pretrained a seeded random model of shape `name` with its tokenizer; returns its facts."""
    import torch
    import transformers

    config_class, architecture, _, _ = SHAPES[name]
    kwargs = config_kwargs(name, quick)
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM if architecture == "decoder-only" else transformers.AutoModelForSeq2SeqLM
    model = auto.from_config(config).eval()
    # plain greedy everywhere: no forced EOS, no blocked words, no length defaults of the checkpoint
    ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    model.generation_config = transformers.GenerationConfig(**{k: kwargs[k] for k in ids if k in kwargs})
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok, special = _tokenizer(name, config.vocab_size, architecture)
    tok.save(str(folder / "tokenizer.json"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(folder))
    facts = {
        "shape": name,
        "architecture": architecture,
        "config": kwargs,
        "vocab_size": config.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_parameters": step_params(model, architecture),
        "special_ids": {role: i for role, (i, _) in special_tokens(name, config.vocab_size).items()},
        "decoder_start": kwargs.get("decoder_start_token_id", 0) if architecture == "encoder-decoder" else None,
        "token_range": token_range(name, config.vocab_size),
    }
    (folder / "bench_facts.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts
