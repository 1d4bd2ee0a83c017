"""Sampling: the pure filter/draw functions against hand-computed values, seeds, and the
empirical distribution of the engine's draws (chi-square)."""

from __future__ import annotations

import numpy as np
import pytest

from seqport.engine import sampling
from seqport.engine.config import GenerationConfig
from seqport.engine.processors import build_processors

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]
NEG = -np.inf


# --- filters, hand-computed ----------------------------------------------------------------

PROBS = np.log([[0.5, 0.3, 0.15, 0.05]])  # logits whose softmax is exactly these probabilities


@pytest.mark.parametrize(
    "fn, value, expected",
    [
        (sampling.top_p_filter, 0.75, [[PROBS[0, 0], PROBS[0, 1], NEG, NEG]]),  # 0.5 + 0.3 reach 0.75
        (sampling.top_p_filter, 0.85, [[PROBS[0, 0], PROBS[0, 1], PROBS[0, 2], NEG]]),  # needs 0.15 too
        (sampling.top_p_filter, 0.4, [[PROBS[0, 0], NEG, NEG, NEG]]),
        (sampling.top_p_filter, 1.0, PROBS),
        (sampling.min_p_filter, 0.2, [[PROBS[0, 0], PROBS[0, 1], PROBS[0, 2], NEG]]),  # < 0.2 · 0.5
        (sampling.min_p_filter, 0.61, [[PROBS[0, 0], NEG, NEG, NEG]]),  # 0.3 < 0.305
        (sampling.min_p_filter, 0.0, PROBS),
        (sampling.top_k_filter, 1, [[PROBS[0, 0], NEG, NEG, NEG]]),
        (sampling.top_k_filter, 3, [[PROBS[0, 0], PROBS[0, 1], PROBS[0, 2], NEG]]),
        (sampling.top_k_filter, 0, PROBS),
        (sampling.top_k_filter, 9, PROBS),
    ],
)
def test_filters_match_hand_computed(fn, value, expected):
    np.testing.assert_allclose(fn(PROBS, value), expected)


def test_top_k_keeps_ties_and_min_keep():
    scores = np.array([[1.0, 3.0, 3.0, 0.0]])
    np.testing.assert_array_equal(sampling.top_k_filter(scores, 1), [[NEG, 3.0, 3.0, NEG]])
    np.testing.assert_array_equal(sampling.top_p_filter(PROBS, 0.1, min_keep=2)[0, 2:], [NEG, NEG])
    assert np.isfinite(sampling.top_p_filter(PROBS, 0.1, min_keep=2)[0, :2]).all()


def test_temperature_divides():
    np.testing.assert_allclose(sampling.apply_temperature(np.array([[2.0, -1.0]]), 0.5), [[4.0, -2.0]])


def test_processors_order_sampling_filters_last():
    config = GenerationConfig(do_sample=True, temperature=0.5, top_k=2, repetition_penalty=2.0)
    names = [p.func.__name__ for p in build_processors(config, (2,))]
    assert names == ["repetition_penalty", "_warp", "_warp"]
    assert [p.keywords.get("fn") for p in build_processors(config, (2,))][1:] == [
        sampling.apply_temperature,
        sampling.top_k_filter,
    ]
    assert build_processors(config.replace(do_sample=False), (2,))[0].func.__name__ == "repetition_penalty"
    assert len(build_processors(config.replace(do_sample=False), (2,))) == 1  # filters need do_sample


# --- drawing -------------------------------------------------------------------------------


def test_sample_is_deterministic_per_generator_and_never_draws_zero_probability():
    scores = np.tile(np.array([0.0, NEG, 1.0, NEG, 0.5]), (500, 1))
    first = sampling.sample(scores, [np.random.default_rng(3)] * 500)
    again = sampling.sample(scores, [np.random.default_rng(3)] * 500)
    np.testing.assert_array_equal(first, again)
    assert set(first.tolist()) == {0, 2, 4}


def _chi_square(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def test_sample_distribution_chi_square():
    """20 000 draws from softmax(logits / 0.7) over 6 tokens. Critical value of chi-square with
    5 degrees of freedom at alpha = 0.001: 20.515 (standard table). The same draws tested against
    the untempered softmax must fail, so the test can tell the two apart."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n, rng = 20_000, np.random.default_rng(2024)
    scores = np.tile(sampling.apply_temperature(logits, 0.7), (n, 1))
    counts = np.bincount(sampling.sample(scores, [rng] * n), minlength=6)
    assert _chi_square(counts, n * sampling.softmax(logits / 0.7)) < 20.515
    assert _chi_square(counts, n * sampling.softmax(logits)) > 20.515


# --- the engine ------------------------------------------------------------------------------


def test_same_seed_same_output_other_seed_other_output(model):
    cfg = dict(do_sample=True, max_new_tokens=10, top_k=20, temperature=1.3)
    first = model.generate(SOURCES, seed=11, **cfg)
    assert [r.ids for r in model.generate(SOURCES, seed=11, **cfg)] == [r.ids for r in first]
    assert [r.ids for r in model.generate(SOURCES, seed=12, **cfg)] != [r.ids for r in first]
    greedy = model.generate(SOURCES, max_new_tokens=10)
    assert [r.ids for r in first] != [r.ids for r in greedy]


def test_sampling_batched_equals_single_with_seed_plus_index(model):
    """Input i of a call draws from default_rng([seed + i, sample]): a batch equals single
    calls made with seed + i, whatever the batch size."""
    cfg = dict(do_sample=True, max_new_tokens=9, top_p=0.9, eos_token_ids=[52])
    batched = model.generate(SOURCES, seed=5, **cfg)
    for i, source in enumerate(SOURCES):
        single = model.generate([source], seed=5 + i, **cfg)[0]
        assert single.ids == batched[i].ids
        assert single.score == pytest.approx(batched[i].score, abs=1e-4)
    assert [r.ids for r in model.generate(SOURCES, seed=5, batch_size=1, **cfg)] == [r.ids for r in batched]


def test_num_return_sequences_samples_best_first(model):
    result = model.generate(SOURCES[:1], do_sample=True, seed=0, num_return_sequences=4, max_new_tokens=6)[0]
    scores = [s.score for s in result.sequences]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert len({tuple(s.ids) for s in result.sequences}) > 1


def _recording(model, monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Record (row sources, raw logits) of every decoder step the loop makes."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    prepare = model._prepare

    def recording_prepare(batch, config):
        first, step = prepare(batch, config)

        def recording_step(tokens, cache, sources):
            logits = step(tokens, cache, sources)
            calls.append((sources.copy(), logits.copy()))
            return logits

        return first, recording_step

    monkeypatch.setattr(model, "_prepare", recording_prepare)
    return calls


def test_top_k_never_leaves_the_k_most_likely(model, monkeypatch):
    calls = _recording(model, monkeypatch)
    results = model.generate(SOURCES, do_sample=True, top_k=3, seed=1, max_new_tokens=15, eos_token_ids=[12])
    outside_argmax = 0
    for source, result in enumerate(results):
        tokens = result.ids + ([12] if result.finish_reason == "eos" else [])
        for step, token in enumerate(tokens):
            sources, logits = calls[step]
            row = logits[list(sources).index(source)]
            assert token in np.argsort(-row)[:3], f"step {step} input {source}: {token} not in the top 3"
            outside_argmax += token != row.argmax()
    assert outside_argmax > 5  # it really sampled


def test_engine_first_token_distribution_chi_square(model):
    """4000 copies of one input, one token each, temperature 0.6: the counts must match
    softmax(first-step logits / 0.6) from the decoder itself. Bins expected below 5 are pooled.
    Critical value at alpha = 0.001 from the Wilson-Hilferty approximation
    k·(1 - 2/(9k) + 3.0902·sqrt(2/(9k)))³, computed below for the pooled degrees of freedom k."""
    n, temperature = 4000, 0.6
    results = model.generate([SOURCES[1]] * n, do_sample=True, seed=0, temperature=temperature, max_new_tokens=1)
    counts = np.bincount([r.ids[0] if r.ids else 2 for r in results], minlength=model.manifest.vocab_size)
    ids = np.array([SOURCES[1]])
    cross = {k: v for k, v in model.encode(ids, np.ones_like(ids)).items() if k.startswith("cross_")}
    kv = model.manifest.kv
    empty = np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), np.float32)
    past = {f"past_{n}.{i}": empty for n in ("key", "value") for i in range(kv.num_layers)}
    feeds = {"input_ids": np.array([[1]]), "encoder_attention_mask": np.ones_like(ids), **cross, **past}
    logits = model.run_decoder({**feeds, "logits_positions": np.array([0])})["logits"][0, 0]
    expected = n * sampling.softmax(logits.astype(np.float64) / temperature)
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    k = len(counts) - 1
    critical = k * (1 - 2 / (9 * k) + 3.0902 * np.sqrt(2 / (9 * k))) ** 3
    assert _chi_square(counts, expected) < critical
    assert _chi_square(counts, n * sampling.softmax(logits.astype(np.float64))) > critical  # T matters
