"""Decoder-only families (GPT-2, Llama, Mistral, Qwen2): engine vs transformers.

Each row of CASES is a tiny seeded random model built from its config class (odd sizes,
fewer KV heads than query heads where the family allows, widened init so outputs vary),
exported once per session. Greedy generation through the engine must equal transformers'
`generate()` token for token on a left-padded batch of 3 prompts, per-step logits within 1e-4,
and a padded row must equal the same prompt alone.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from seqport.engine.causal_lm import left_pad  # noqa: E402
from seqport.engine.errors import ExportError  # noqa: E402
from seqport.export.families import FAMILIES  # noqa: E402

VOCAB, MAX_NEW, ATOL = 307, 10, 1e-4
PROMPTS = ["the small red house where the cat sat on", "a dog ran in the park", "numbers"]
CORPUS = PROMPTS + ["where is the small red house", "one two three four five six", "the cat sat on the mat"]


@dataclass(frozen=True)
class Row:
    """One family: its config, special ids and tokenizer style ("gpt2": byte-level BPE, no
    post-processor; "llama": byte-level BPE whose post-processor prepends <s>)."""

    config_class: str
    config: dict
    tokenizer: str


GPT2_STYLE = dict(bos_token_id=0, eos_token_id=0)
LLAMA_STYLE = dict(bos_token_id=1, eos_token_id=2, pad_token_id=None, max_position_embeddings=48, num_hidden_layers=2)
CASES = {
    "gpt2": Row(
        "GPT2Config",
        dict(n_embd=36, n_head=3, n_layer=2, n_positions=48, n_inner=52, **GPT2_STYLE),
        "gpt2",
    ),
    "llama": Row(  # head_dim 10 ≠ 48/4, GQA 4:2, linear RoPE scaling and a non-default theta
        "LlamaConfig",
        dict(
            hidden_size=48,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=10,
            intermediate_size=56,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
            **LLAMA_STYLE,
        ),
        "llama",
    ),
    "mistral": Row(  # GQA 5:1 and a sliding window shorter than prompt + generation
        "MistralConfig",
        dict(
            hidden_size=40,
            num_attention_heads=5,
            num_key_value_heads=1,
            intermediate_size=44,
            sliding_window=6,
            **LLAMA_STYLE,
        ),
        "llama",
    ),
    "qwen2": Row(  # QKV bias, tied embedding, layer 1 sliding (window 5), layer 0 full
        "Qwen2Config",
        dict(
            hidden_size=36,
            num_attention_heads=3,
            num_key_value_heads=1,
            intermediate_size=60,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=5,
            max_window_layers=1,
            **{**LLAMA_STYLE, "bos_token_id": 0, "eos_token_id": 0},
        ),
        "gpt2",
    ),
}


def _tokenizer(style: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if style == "gpt2" else ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def _widen(model, seed: int) -> None:
    """Weights std 2.5/sqrt(d), norm gains around 1, biases around 0: random models with HF's
    0.02 init give near-uniform logits and one repeated token."""
    gen = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() == 2:
                param.copy_(noise * 2.5 / d**0.5)
            elif name.endswith("bias"):
                param.copy_(noise * 0.3)
            else:
                param.copy_(1.0 + noise * 0.3)


def _write_checkpoint(family: str, folder: Path) -> Path:
    row = CASES[family]
    config = getattr(transformers, row.config_class)(vocab_size=VOCAB, **row.config)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    _widen(model, seed=sorted(CASES).index(family))
    model.save_pretrained(folder)
    _tokenizer(row.tokenizer).save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="session", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(family, HF model, engine model): each family exported once per session."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    family = request.param
    root = tmp_path_factory.mktemp(family)
    checkpoint = _write_checkpoint(family, root / "checkpoint")
    export_model(checkpoint, root / "artifact", progress=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return family, hf, sp.load(root / "artifact")


def _longest_first(engine) -> list[str]:
    """PROMPTS sorted as the engine batches them (stably, longest first), so rows keep input order."""
    return sorted(PROMPTS, key=lambda text: -len(engine.input_ids([text])[0]))


def _generate(engine, inputs, **options):
    """engine.generate plus the logits of every step: a list of (sources (N,), logits (N, V))."""
    steps, batches = [], []
    prepare = engine._prepare

    def recording_prepare(batch, config):
        batches.append(batch)
        first, step = prepare(batch, config)

        def recording_step(tokens, cache, sources):
            logits = step(tokens, cache, sources)
            steps.append((sources.copy(), logits.copy()))
            return logits

        return first, recording_step

    engine._prepare = recording_prepare
    try:
        results = engine.generate(inputs, **options)
    finally:
        del engine._prepare
    assert len(batches) == 1, "one batch expected"
    return results, batches[0], steps


def _hf_generate(hf, prompts: list[list[int]], pad: int):
    ids, mask = left_pad(prompts, pad)
    with torch.inference_mode():
        out = hf.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=MAX_NEW,
            min_new_tokens=MAX_NEW,  # both sides run the same steps; EOS is checked on raw logits
            num_beams=1,
            do_sample=False,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[:, ids.shape[1] :].numpy(), [step.numpy() for step in out.logits]


def test_greedy_equals_transformers_generate(exported):
    """Token for token on a left-padded batch of 3, per-step logits within 1e-4."""
    family, hf, engine = exported
    prompts = _longest_first(engine)
    results, batch, steps = _generate(engine, prompts, max_new_tokens=MAX_NEW)
    assert batch == engine.input_ids(prompts), "the batch kept the input order"
    if CASES[family].tokenizer == "llama":
        assert all(ids[0] == engine.manifest.special_ids.bos for ids in batch), "post-processor adds <s>"
    eos = engine.manifest.special_ids.eos
    hf_tokens, hf_logits = _hf_generate(hf, batch, engine.manifest.special_ids.pad)
    for step, (sources, logits) in enumerate(steps):
        for row, source in enumerate(sources):
            diff = np.abs(logits[row] - hf_logits[step][source]).max()
            assert diff <= ATOL, f"{family} step {step} input {source}: max abs logits diff {diff:.3g}"
    for source, result in enumerate(results):
        n = len(result.ids)
        assert result.ids == hf_tokens[source, :n].tolist()
        if result.finish_reason == "eos":  # HF was kept going: its raw argmax must be EOS there
            assert int(hf_logits[n][source].argmax()) in eos
        else:
            assert n == MAX_NEW
    generated = [tuple(r.ids) for r in results]
    assert len(set(generated)) > 1 and any(len(set(ids)) > 2 for ids in generated), "outputs should vary"


def test_padded_row_equals_the_prompt_alone(exported):
    """Left padding changes nothing: ids and every step's logits match batch-of-one runs."""
    _, _, engine = exported
    prompts = _longest_first(engine)
    batched, _, batched_steps = _generate(engine, prompts, max_new_tokens=MAX_NEW)
    for source, prompt in enumerate(prompts):
        alone, _, alone_steps = _generate(engine, [prompt], max_new_tokens=MAX_NEW)
        assert alone[0].ids == batched[source].ids
        for (sources, logits), (_, single) in zip(batched_steps, alone_steps):
            row = list(sources).index(source)
            np.testing.assert_allclose(logits[row], single[0], atol=ATOL, rtol=0)


def test_scoring_equals_generation_logprobs(exported):
    """Invariant: log-probs of the generated tokens recomputed in one teacher-forced call
    (no cache; prompts left-padded, targets right-padded) equal those of cached generation."""
    _, _, engine = exported
    prompts = engine.input_ids(_longest_first(engine))
    results = engine.generate_ids(prompts, engine.default_config.replace(max_new_tokens=MAX_NEW))
    targets = [r.ids for r in results] + [results[0].ids[:1]]  # and a one-token target
    scores = engine.score(prompts + [prompts[0]], targets)
    for result, score in zip(results + [results[0]], scores):
        assert score.ids == result.ids[: len(score.ids)]
        np.testing.assert_allclose(score.token_logprobs, result.token_logprobs[: len(score.ids)], atol=ATOL, rtol=0)
    text = " the park"  # a text continuation is encoded without the post-processor's <s>
    (by_text,), (by_ids,) = (
        engine.score(PROMPTS[1], text),
        engine.score(PROMPTS[1], [engine.tokenizer.encode_plain(text)]),
    )
    assert by_text == by_ids and by_text.ids[0] != engine.manifest.special_ids.bos


def test_prefix_ids_extend_the_prompt(exported):
    """A forced prefix is part of the prompt: same tokens as the prompt + prefix, not returned."""
    _, _, engine = exported
    prompt, prefix = engine.input_ids(PROMPTS[1])[0], engine.tokenizer.encode_plain(" the")
    (forced,) = engine.generate([prompt], max_new_tokens=4, prefix_ids=prefix)
    (plain,) = engine.generate([prompt + prefix], max_new_tokens=4)
    assert forced.ids == plain.ids and forced.token_logprobs == plain.token_logprobs


def test_prompt_logits_equal_transformers_forward(exported):
    """Scoring: logits at every real prompt position of a left-padded prefill (logits_positions
    = arange(T)) equal transformers' forward with the same mask and mask-derived positions."""
    from seqport.engine.causal_lm import positions

    _, hf, engine = exported
    ids, mask = left_pad(engine.input_ids(PROMPTS), engine.manifest.special_ids.pad)
    kv = engine.manifest.kv
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}
    feeds["logits_positions"] = np.arange(ids.shape[1])
    for i in range(kv.num_layers):
        feeds[f"past_key.{i}"] = feeds[f"past_value.{i}"] = np.zeros((3, kv.num_kv_heads, 0, kv.head_dim), np.float32)
    ours = engine.run_decoder(feeds)
    with torch.inference_mode():
        theirs = hf(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions(mask))
        ).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours["logits"][real], theirs[real], atol=ATOL, rtol=0)
    assert ours["present_key.0"].shape == (3, kv.num_kv_heads, ids.shape[1], kv.head_dim)


def test_manifest_and_graph_names(exported):
    """One `decoder` component, the KV cache at the model's KV heads, §5 graph names, and each
    weight stored once (a tied embedding feeds the Gather and the head from one initializer)."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    family, hf, engine = exported
    m, config = engine.manifest, hf.config
    assert (m.architecture, m.family, list(m.components)) == ("decoder-only", family, ["decoder"])
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    assert (m.kv.num_kv_heads, m.kv.num_layers) == (heads, config.num_hidden_layers)
    assert m.special_ids.pad is not None and m.special_ids.eos == [config.eos_token_id]
    graph = onnx.load(str(engine.folder / "decoder.onnx")).graph
    assert [i.name for i in graph.input][:4] == ["input_ids", "attention_mask", "position_ids", "logits_positions"]
    assert [i.name for i in graph.input][4:] == [f"past_key_values.{i}.{kv}" for kv in ("key", "value") for i in (0, 1)]
    assert [o.name for o in graph.output] == ["logits"] + [
        f"present.{i}.{kv}" for kv in ("key", "value") for i in (0, 1)
    ] + ["greedy_ids", "greedy_logprobs"]  # the greedy head (export/greedy_head.py)
    digests: dict[str, str] = {}
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        digest = hashlib.sha256(np.sort(values, axis=None).tobytes()).hexdigest()  # catches transposes
        assert values.size < 64 or digest not in digests, f"{init.name} duplicates {digests.get(digest)}"
        digests[digest] = init.name
    tied = getattr(config, "tie_word_embeddings", False)
    shared = m.shared_weights.tensors if m.shared_weights else {}
    assert len(shared) == int(tied)  # a tied table goes to shared.data, where the engine maps it itself
    assert all(t.components == ["decoder"] and t.shape == [VOCAB, config.hidden_size] for t in shared.values())


@pytest.mark.parametrize("exported", ["gpt2"], indirect=True)  # RoPE is relative: shifts cancel out
def test_arange_positions_would_break_padded_gpt2_rows(exported, monkeypatch):
    """The padded-row test has teeth: with positions 0..L-1 regardless of padding (the bug of
    huggingface/optimum#877) GPT-2's learned positions give a padded row other logits."""
    from seqport.engine import causal_lm

    _, _, engine = exported
    prompts = _longest_first(engine)
    _, _, alone = _generate(engine, [prompts[-1]], max_new_tokens=2)
    monkeypatch.setattr(causal_lm, "positions", lambda mask: np.broadcast_to(np.arange(mask.shape[1]), mask.shape))
    _, _, padded = _generate(engine, prompts, max_new_tokens=2)
    assert np.abs(padded[0][1][2] - alone[0][1][0]).max() > 1e-2


def test_every_decoder_only_family_has_a_parity_row():
    """Meta-test: a family registered with a decoder-only exporter must have a row in CASES."""
    decoder_only = {
        model_type
        for model_type, module in FAMILIES.items()
        if getattr(importlib.import_module(module), "ARCHITECTURE", None) == "decoder-only"
    }
    assert decoder_only >= {"gpt2", "llama", "mistral", "qwen2"}
    assert decoder_only - set(CASES) == set(), "add a parity row for every decoder-only family"


def test_dynamic_rope_is_refused_with_the_supported_types():
    from seqport.export.llama import LlamaAdapter

    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=24,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        **LLAMA_STYLE,
    )
    with pytest.raises(ExportError, match=r"rope_type 'dynamic' .* supported rope types are: default, linear"):
        LlamaAdapter(transformers.LlamaForCausalLM(config))


@pytest.mark.parametrize(
    "hf_options, expected",
    [
        ({}, {}),
        ({"max_new_tokens": 30}, {"max_new_tokens": 30}),
        ({"do_sample": False, "temperature": 0.7}, {}),  # greedy: sampling options do not apply
        (
            {"do_sample": True, "temperature": 0.6, "top_p": 0.9},
            {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 50},  # transformers' top_k default
        ),
        ({"num_beams": 4, "length_penalty": 0.8}, {"num_beams": 4, "length_penalty": 0.8}),
        (
            {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
            {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
        ),
    ],
)
def test_generation_defaults_use_seqport_names(hf_options, expected):
    from seqport.engine.config import GenerationConfig
    from seqport.export.causal import generation_defaults

    defaults = generation_defaults(transformers.GenerationConfig(**hf_options))
    assert defaults == expected
    GenerationConfig.from_defaults(defaults)  # every key is a valid seqport option


def test_gpt2_with_cross_attention_is_refused():
    from seqport.export.gpt2 import GPT2Adapter

    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_head=2, n_layer=1, add_cross_attention=True)
    with pytest.raises(ExportError, match="add_cross_attention=True.* not a decoder-only model"):
        GPT2Adapter(transformers.GPT2LMHeadModel(config))


@pytest.mark.parametrize("exported", ["gpt2"], indirect=True)
def test_forcing_another_family_names_both(exported):
    from seqport.export.families import load_adapter

    _, _, engine = exported
    with pytest.raises(ExportError, match="holds a 'gpt2' model; this adapter exports: llama, mistral, qwen2"):
        load_adapter(Path(engine.manifest.provenance.source), family="llama")


def test_gpt2_with_end_of_text_as_last_id_exports(tmp_path):
    """Real GPT-2 checkpoints put <|endoftext|> (eos = bos = pad) at the last id: validation must
    still find ordinary ids to draw prompts from."""
    from seqport.export.pipeline import export_model

    checkpoint = _write_checkpoint("gpt2", tmp_path / "checkpoint")
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "generation_config.json").unlink(missing_ok=True)
    manifest = export_model(checkpoint, tmp_path / "artifact", progress=False)
    assert manifest.special_ids.eos == [VOCAB - 1]
    assert manifest.validation.max_abs_diff["decoder"]["logits"] <= 1e-4


def test_preallocated_cache_matches_transformers(exported, tmp_path):
    """kv_cache="preallocated" (mask over every buffer slot, cache_position, writes in place):
    greedy on the left-padded batch equals transformers token for token with per-step logits
    ≤ 1e-4, on the host loop and the device loop; beam search and scoring equal the growing
    artifact's."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    family, hf, grown = exported
    manifest = export_model(grown.manifest.provenance.source, tmp_path / "a", progress=False, kv_cache="preallocated")
    assert manifest.kv.allocation == "preallocated"
    host = sp.load(tmp_path / "a")
    device = sp.load(tmp_path / "a", options=sp.RuntimeOptions(device_loop=True))
    prompts = _longest_first(host)
    results, batch, steps = _generate(host, prompts, max_new_tokens=MAX_NEW)
    hf_tokens, hf_logits = _hf_generate(hf, batch, host.manifest.special_ids.pad)
    for step, (sources, logits) in enumerate(steps):
        np.testing.assert_allclose(logits, hf_logits[step][sources], atol=ATOL, rtol=0, err_msg=f"{family} {step}")
    for source, result in enumerate(results):
        assert result.ids == hf_tokens[source, : len(result.ids)].tolist()
    assert [r.ids for r in device.generate(prompts, max_new_tokens=MAX_NEW)] == [r.ids for r in results]
    beams = dict(max_new_tokens=MAX_NEW, num_beams=3)
    expected = [r.ids for r in grown.generate(prompts, **beams)]
    assert [r.ids for r in host.generate(prompts, **beams)] == expected
    assert [r.ids for r in device.generate(prompts, **beams)] == expected
    targets = [r.ids for r in results]
    for ours, theirs in zip(host.score(batch, targets), grown.score(batch, targets)):
        np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=1e-5, rtol=0)
