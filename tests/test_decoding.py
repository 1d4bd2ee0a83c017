"""Decoding options on the committed tiny artifact: processors against hand-computed values,
stop strings, prefixes, batching, score(), every ConfigError, and `seqport generate` flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqport.cli.main import main
from seqport.engine import processors as proc
from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError, InputError

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]
NEG = -np.inf


# --- processors on literal arrays ------------------------------------------------------------


@pytest.mark.parametrize(
    "processor, history, step, expected",
    [
        (  # seen tokens 0 and 1: positive ÷ 2, negative × 2
            lambda s, h, k: proc.repetition_penalty(s, h, k, penalty=2.0),
            [[0, 1, 1]],
            3,
            [[1.0, -2.0, 0.5, 3.0]],
        ),
        (  # "5 x" occurred as "5 1" and "5 2": after a 5, 1 and 2 are banned
            lambda s, h, k: proc.no_repeat_ngram(s, h, k, size=2),
            [[3, 1, 3, 2, 3]],
            5,
            [[2.0, NEG, NEG, 3.0]],
        ),
        (  # trigram "1 2 3" occurred; the history ends with "1 2" → 3 is banned
            lambda s, h, k: proc.no_repeat_ngram(s, h, k, size=3),
            [[1, 2, 3, 1, 2]],
            5,
            [[2.0, -1.0, 0.5, NEG]],
        ),
        (  # too short for any trigram
            lambda s, h, k: proc.no_repeat_ngram(s, h, k, size=3),
            [[1, 2]],
            2,
            [[2.0, -1.0, 0.5, 3.0]],
        ),
        (  # word [3] always; word [1, 0] only after a 1
            lambda s, h, k: proc.bad_words(s, h, k, words=((3,), (1, 0))),
            [[2, 1], [1, 2]],
            2,
            [[NEG, -1.0, 0.5, NEG], [2.0, -1.0, 0.5, NEG]],
        ),
        (lambda s, h, k: proc.min_new_tokens(s, h, k, minimum=2, eos=(1, 3)), [[0]], 1, [[2.0, NEG, 0.5, NEG]]),
        (lambda s, h, k: proc.min_new_tokens(s, h, k, minimum=2, eos=(1, 3)), [[0]], 2, [[2.0, -1.0, 0.5, 3.0]]),
        (lambda s, h, k: proc.forced_first_token(s, h, k, token=2), [[0]], 0, [[NEG, NEG, 0.0, NEG]]),
        (lambda s, h, k: proc.forced_first_token(s, h, k, token=2), [[0, 1]], 1, [[2.0, -1.0, 0.5, 3.0]]),
        (lambda s, h, k: proc.suppress(s, h, k, tokens=(0, 2)), [[0]], 0, [[NEG, -1.0, NEG, 3.0]]),
    ],
)
def test_processor_on_literal_scores(processor, history, step, expected):
    scores = np.tile([2.0, -1.0, 0.5, 3.0], (len(history), 1))
    np.testing.assert_array_equal(processor(scores, np.array(history), step), expected)


def test_bad_words_that_are_a_lone_eos_are_dropped():
    """transformers drops [eos] from bad_words_ids: banning EOS would never end a sequence."""
    config = GenerationConfig(bad_words_ids=[[2], [5, 6]])
    (processor,) = proc.build_processors(config, (2,))
    assert processor.keywords["words"] == ((5, 6),)


# --- the engine against an independent greedy loop (full prefix each step, no cache) ---------


def recompute_greedy(model, source, start, steps, eos, transform=lambda logits, prefix, step: logits):
    """Greedy ids (EOS included when reached) with `transform` applied to each step's logits."""
    ids = np.array([source])
    mask = np.ones_like(ids)
    cross = {k: v for k, v in model.encode(ids, mask).items() if k.startswith("cross_")}
    kv = model.manifest.kv
    empty = np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), np.float32)
    past = {f"past_{n}.{i}": empty for n in ("key", "value") for i in range(kv.num_layers)}
    prefix, out = list(start), []
    for step in range(steps):
        feeds = {"input_ids": np.array([prefix]), "encoder_attention_mask": mask, **cross, **past}
        logits = model.run_decoder({**feeds, "logits_positions": np.arange(len(prefix))})["logits"][0, -1]
        token = int(np.argmax(transform(logits.astype(np.float64), prefix, step)))
        out.append(token)
        if token in eos:
            break
        prefix.append(token)
    return out


def _generated(result, eos):
    return result.ids + ([eos] if result.finish_reason == "eos" else [])


def test_repetition_penalty_matches_hand_rule(model):
    def penalise(logits, prefix, step):  # every token of the decoder sequence, start token included
        for token in set(prefix):
            logits[token] = logits[token] * 1.5 if logits[token] < 0 else logits[token] / 1.5
        return logits

    for source in SOURCES:
        result = model.generate([source], max_new_tokens=12, repetition_penalty=1.5)[0]
        assert result.ids == recompute_greedy(model, source, [1], 12, {2}, penalise)
    assert result.ids != model.generate([source], max_new_tokens=12)[0].ids  # it changed something


def test_no_repeat_ngram_matches_hand_rule(model):
    def ban(logits, prefix, step):
        size = 2
        tail = prefix[len(prefix) - size + 1 :]
        for i in range(len(prefix) - size + 1):
            if prefix[i : i + size - 1] == tail:
                logits[prefix[i + size - 1]] = -np.inf
        return logits

    for source in SOURCES:
        result = model.generate([source], max_new_tokens=15, no_repeat_ngram_size=2)[0]
        assert result.ids == recompute_greedy(model, source, [1], 15, {2}, ban)
        bigrams = list(zip([1, *result.ids], result.ids))
        assert len(bigrams) == len(set(bigrams))


def test_min_new_tokens_forbids_eos_until_reached(model):
    eos = model.generate(SOURCES, max_new_tokens=1)[1].ids[0]  # the token input 1 starts with

    def forbid(logits, prefix, step):
        if step < 4:
            logits[eos] = -np.inf
        return logits

    assert model.generate([SOURCES[1]], max_new_tokens=8, eos_token_ids=[eos])[0].ids == []
    result = model.generate([SOURCES[1]], max_new_tokens=8, eos_token_ids=[eos], min_new_tokens=4)[0]
    assert _generated(result, eos) == recompute_greedy(model, SOURCES[1], [1], 8, {eos}, forbid)
    assert len(result.ids) >= 4


def test_prefix_forced_after_start_and_not_returned(model):
    prefix = [40, 41]
    for source in SOURCES:
        result = model.generate([source], max_new_tokens=8, prefix_ids=prefix)[0]
        assert result.ids == recompute_greedy(model, source, [1, *prefix], 8, {2})
        assert result.text == model.tokenizer.decode(result.ids)


def test_forced_bos_suppress_and_bad_words(model):
    forced = model.generate(SOURCES, max_new_tokens=6, forced_bos_token_id=77)
    assert all(r.ids[0] == 77 and r.token_logprobs[0] == 0.0 for r in forced)
    plain = model.generate(SOURCES, max_new_tokens=10)
    common = {t for r in plain for t in r.ids}
    banned = sorted(common)[:3]
    suppressed = model.generate(SOURCES, max_new_tokens=10, suppress_tokens=banned)
    assert not {t for r in suppressed for t in r.ids} & set(banned)
    word = tuple(plain[0].ids[:2])  # the greedy output starts with this pair: now forbidden
    for result in model.generate(SOURCES, max_new_tokens=10, bad_words_ids=[word]):
        assert word not in set(zip(result.ids, result.ids[1:]))


def test_stop_string_across_a_token_boundary(model):
    result = model.generate([SOURCES[0]], max_new_tokens=12)[0]
    tok = model.tokenizer
    texts = [tok.decode(result.ids[:k]) for k in range(len(result.ids) + 1)]
    k = next(k for k in range(2, len(texts)) if len(texts[k - 1]) >= 1 and len(texts[k]) > len(texts[k - 1]) + 1)
    stop = texts[k][len(texts[k - 1]) - 1 : len(texts[k - 1]) + 1]  # last char of token k-1, first of k
    assert not any(stop in tok.decode([t]) for t in result.ids)  # no single token holds it
    first = next(j for j in range(len(texts)) if stop in texts[j])  # the token that completes it
    stopped = model.generate([SOURCES[0]], max_new_tokens=12, stop=[stop, "never-there"])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.ids == result.ids[:first]
    assert stopped.text == texts[-1][: texts[-1].index(stop)]
    beams = model.generate([SOURCES[0]], max_new_tokens=12, stop=[stop], num_beams=3)[0]
    assert all(stop not in s.text for s in beams.sequences)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(repetition_penalty=1.3, no_repeat_ngram_size=3),
        dict(prefix_ids=[40], min_new_tokens=2, eos_token_ids=[55]),
        dict(do_sample=True, seed=3, top_k=10, num_return_sequences=2),
        dict(num_beams=3, num_return_sequences=2, eos_token_ids=[12], early_stopping=True),
    ],
)
def test_batched_equals_single(model, cfg):
    batched = model.generate(SOURCES, max_new_tokens=9, **cfg)
    for i, source in enumerate(SOURCES):
        seed = {"seed": cfg["seed"] + i} if "seed" in cfg else {}
        single = model.generate([source], max_new_tokens=9, **{**cfg, **seed})[0]
        assert [s.ids for s in single.sequences] == [s.ids for s in batched[i].sequences]
        np.testing.assert_allclose(
            [s.score for s in single.sequences], [s.score for s in batched[i].sequences], atol=1e-4
        )


@pytest.mark.export
def test_greedy_matches_torch_reference(model, tiny_checkpoint):
    torch = pytest.importorskip("torch")
    from seqport.export.models import Transformer
    from seqport.export.reference import greedy_generate

    reference = Transformer.load(tiny_checkpoint)
    ids = torch.zeros((3, 11), dtype=torch.long)
    for row, source in enumerate(SOURCES):
        ids[row, : len(source)] = torch.tensor(source)
    expected = greedy_generate(reference, ids, (ids != 0).long(), 15)
    results = model.generate(SOURCES, max_new_tokens=15)
    assert [_generated(r, 2) for r in results] == expected


# --- score() ----------------------------------------------------------------------------------

TARGETS = [[40, 41, 42, 2], [55, 2], [12, 100, 52, 34, 60, 2]]


@pytest.mark.export
def test_score_matches_torch_log_softmax(model, tiny_checkpoint):
    torch = pytest.importorskip("torch")
    from seqport.export.models import Transformer

    reference = Transformer.load(tiny_checkpoint)
    scores = model.score(SOURCES, TARGETS, batch_size=2)
    for source, target, scored in zip(SOURCES, TARGETS, scores):
        src = torch.tensor([source])
        with torch.inference_mode():
            logits = reference(src, torch.ones_like(src), torch.tensor([[1, *target[:-1]]]))[0]
        expected = logits.double().log_softmax(-1)[torch.arange(len(target)), torch.tensor(target)]
        np.testing.assert_allclose(scored.token_logprobs, expected.numpy(), atol=1e-4)
        assert scored.score == pytest.approx(float(expected.sum()), abs=1e-4)
        assert scored.ids == target


def test_score_of_generated_output_equals_its_generation_logprobs(model):
    results = model.generate(SOURCES, max_new_tokens=7, eos_token_ids=[55])
    targets = [_generated(r, 55) for r in results]
    for result, scored in zip(results, model.score(SOURCES, targets)):
        np.testing.assert_allclose(scored.token_logprobs[: len(result.ids)], result.token_logprobs, atol=1e-4)
        assert scored.score == pytest.approx(result.score, abs=1e-4)


def test_score_batches_and_text_targets(model):
    whole = model.score(SOURCES, TARGETS)
    for single, batched in zip(model.score(SOURCES, TARGETS, batch_size=1), whole):
        np.testing.assert_allclose(single.token_logprobs, batched.token_logprobs, atol=1e-5)
    text = model.score("le chat", "le chat")[0]
    assert text.ids == model.tokenizer.encode(["le chat"])[0] and text.ids[-1] == 2
    assert text.score == pytest.approx(sum(text.token_logprobs))


@pytest.mark.parametrize(
    "sources, targets, match",
    [
        (SOURCES, TARGETS[:2], "one target per source, got 3 sources and 2 targets"),
        (SOURCES[:1], [[]], "target 0 has no tokens"),
        (SOURCES[:1], [[5] * 41], "target 0 has 41 tokens, more than the 40 the model can score"),
        (SOURCES[:1], [[500]], r"target 0 has token ids outside the vocabulary \[0, 120\)"),
    ],
)
def test_score_input_errors(model, sources, targets, match):
    with pytest.raises(InputError, match=match):
        model.score(sources, targets)


# --- every ConfigError --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
        (dict(min_new_tokens=-1), "min_new_tokens must be an integer >= 0"),
        (dict(num_beams=0), "num_beams must be an integer >= 1"),
        (dict(num_return_sequences=0), "num_return_sequences must be >= 1"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(top_k=-1), r"top_k must be an integer >= 0 \(0 disables\)"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(min_p=1.0), r"min_p must be in \[0, 1\)"),
        (dict(length_penalty="long"), "length_penalty must be a number"),
        (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
        (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size must be >= 0"),
        (dict(early_stopping="sometimes"), r"early_stopping must be one of \(True, False, 'never'\)"),
        (dict(early_stopping=1), "early_stopping must be one of"),
        (dict(batch_size=-1), "batch_size must be an integer >= 0"),
        (dict(eos_token_ids=[-1]), "eos_token_ids must be non-negative integers"),
        (dict(suppress_tokens=[1.5]), "suppress_tokens must be non-negative integers"),
        (dict(prefix_ids=["a"]), "prefix_ids must be non-negative integers"),
        (dict(stop=[""]), "stop strings must be non-empty strings"),
        (dict(bad_words_ids=[[]]), "bad_words_ids must be non-empty lists of non-negative integers"),
        (dict(forced_bos_token_id=-3), "forced_bos_token_id must be a non-negative integer or None"),
        (dict(seed=-1), "seed must be a non-negative integer or None"),
        (dict(do_sample="yes"), "do_sample must be True or False"),
        (dict(truncate=None), "truncate must be True or False"),
        (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences \(3\) cannot exceed num_beams \(2\)"),
        (dict(num_return_sequences=2), "num_return_sequences > 1 needs num_beams > 1 or do_sample=True"),
        (dict(num_beams=2, do_sample=True), r"beam sampling\) is not supported: use num_beams=1"),
        (dict(min_new_tokens=9, max_new_tokens=5), r"min_new_tokens \(9\) exceeds max_new_tokens \(5\)"),
    ],
)
def test_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        GenerationConfig(**options)


def test_config_collects_every_problem_and_normalises():
    with pytest.raises(ConfigError, match="temperature must be > 0.*top_p must be in"):
        GenerationConfig(temperature=-1, top_p=2)
    config = GenerationConfig(stop="END", bad_words_ids=[[1, 2]], prefix_ids=[4])
    assert config.stop == ("END",) and config.bad_words_ids == ((1, 2),) and config.prefix_ids == (4,)
    with pytest.raises(TypeError, match=r"unknown generation option\(s\) \['beams'\]"):
        config.replace(beams=2)


def test_token_ids_outside_the_vocabulary(model):
    with pytest.raises(ConfigError, match=r"outside the model's vocabulary \[0, 120\): prefix_ids has ids \[500\]; "):
        model.generate(SOURCES, prefix_ids=[500], suppress_tokens=[120])


# --- `seqport generate` -------------------------------------------------------------------------


def _cli(capsys, *args) -> str:
    assert main(["generate", *args]) == 0
    return capsys.readouterr().out


def test_cli_options_reach_generate(model, tiny_artifact, capsys):
    art = str(tiny_artifact)
    out = _cli(capsys, art, "--ids", "20 21 2", "--num-beams", "3", "--num-return-sequences", "2",
               "--length-penalty", "0.6", "--early-stopping", "never", "--max-new-tokens", "6", "--json")  # fmt: skip
    record = json.loads(out)
    expected = model.generate([[20, 21, 2]], num_beams=3, num_return_sequences=2, length_penalty=0.6,
                              early_stopping="never", max_new_tokens=6)[0]  # fmt: skip
    assert [s["ids"] for s in record["sequences"]] == [s.ids for s in expected.sequences]
    assert record["score"] == pytest.approx(expected.score) and record["ids"] == expected.ids
    sample = ["--do-sample", "--seed", "4", "--top-k", "30", "--temperature", "1.2", "--max-new-tokens", "8"]
    lines = _cli(capsys, art, "le chat", "un chien", *sample).splitlines()
    expected = model.generate(
        ["le chat", "un chien"], do_sample=True, seed=4, top_k=30, temperature=1.2, max_new_tokens=8
    )
    assert lines == [r.text for r in expected]
    assert _cli(capsys, art, "le chat", "un chien", *sample, "--stream").splitlines() == lines


def test_cli_processor_and_stop_flags(model, tiny_artifact, capsys):
    flags = ["--repetition-penalty", "1.4", "--no-repeat-ngram-size", "2", "--min-new-tokens", "2",
             "--suppress-tokens", "55 100", "--bad-words", "12 12", "--prefix", "le", "--stop", "zz",
             "--eos-token-ids", "2", "--max-new-tokens", "9", "--batch-size", "1", "--json"]  # fmt: skip
    record = json.loads(_cli(capsys, str(tiny_artifact), "le chat", *flags))
    expected = model.generate("le chat", repetition_penalty=1.4, no_repeat_ngram_size=2, min_new_tokens=2,
                              suppress_tokens=[55, 100], bad_words_ids=[[12, 12]], stop=["zz"], eos_token_ids=[2],
                              prefix_ids=model.tokenizer.encode_plain("le"), max_new_tokens=9)[0]  # fmt: skip
    assert record["ids"] == expected.ids and record["text"] == expected.text


def test_cli_rejects_bad_flags(tiny_artifact, capsys):
    with pytest.raises(SystemExit):
        main(["generate", str(tiny_artifact), "--ids", "5 x"])
    assert "expected token ids like '5 17 42'" in capsys.readouterr().err
    assert main(["generate", str(tiny_artifact), "hi", "--stream", "--json"]) == 1
    assert "cannot be combined with --json" in capsys.readouterr().err
    assert main(["generate", str(tiny_artifact), "hi", "--num-beams", "2", "--do-sample"]) == 1
    assert "beam sampling" in capsys.readouterr().err
