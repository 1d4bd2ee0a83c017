"""The device loop (the OrtDevice placement, runtimes/ort_device.py) on the CPU.

On the CPU the device is "cpu" and the same IOBinding code runs as on CUDA/TensorRT. Two
claims are checked: the device loop generates what the plain numpy loop generates (ids equal,
scores within 1e-5) for greedy search, seeded sampling and beam search, on the committed
encoder-decoder artifact and on a decoder-only GPT-2 exported in this session; and per decode
step only token ids (and the k candidates of the device selector) cross between host and
device, never K/V or full logits (unless a processor needs the whole distribution).
"""

from __future__ import annotations

import numpy as np
import pytest

import seqport.engine as sp
from seqport.engine.decode_loop import decode_steps
from seqport.engine.device_array import DeviceArray
from seqport.engine.device_search import SAMPLE_TOP_K_CAP, plan_selection
from seqport.engine.errors import ProviderError
from seqport.engine.runtime import RuntimeOptions

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]
PROMPTS = ["the small red house where the cat sat on", "a dog ran in the park", "numbers"]
DEVICE = RuntimeOptions(device_loop=True)
#: name → generation options; "fallback" needs full logits (repetition penalty).
CASES = {
    "greedy": dict(),
    "sample": dict(do_sample=True, top_k=20, temperature=0.8, top_p=0.9, seed=7, num_return_sequences=2),
    "sample_min_p": dict(do_sample=True, top_k=SAMPLE_TOP_K_CAP, min_p=0.05, seed=3),
    "beam": dict(num_beams=3, num_return_sequences=2, length_penalty=0.7),
    "fallback": dict(repetition_penalty=1.3),
}


@pytest.fixture(scope="module")
def seq2seq_pair(tiny_artifact):
    return sp.load(tiny_artifact), sp.load(tiny_artifact, options=DEVICE)


@pytest.fixture(scope="module")
def causal_pair(tmp_path_factory):
    """A tiny seeded GPT-2 exported in this session (as in test_hf_causal.py)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_hf_causal import _write_checkpoint

    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("device_gpt2")
    export_model(_write_checkpoint("gpt2", root / "checkpoint"), root / "artifact", progress=False)
    return sp.load(root / "artifact"), sp.load(root / "artifact", options=DEVICE)


def _assert_same(plain, device, batch, options):
    config = plain.default_config.replace(max_new_tokens=14, **options)
    expected, got = plain.generate_ids(batch, config), device.generate_ids(batch, config)
    for want, have in zip(expected, got):
        assert len(want.sequences) == len(have.sequences)
        for a, b in zip(want.sequences, have.sequences):
            assert a.ids == b.ids and a.finish_reason == b.finish_reason
            assert b.score == pytest.approx(a.score, abs=1e-5)
            np.testing.assert_allclose(b.token_logprobs, a.token_logprobs, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_seq2seq_device_loop_equals_plain_loop(seq2seq_pair, case):
    plain, device = seq2seq_pair
    _assert_same(plain, device, SOURCES, CASES[case])


@pytest.mark.export
@pytest.mark.parametrize("case", sorted(CASES))
def test_decoder_only_device_loop_equals_plain_loop(causal_pair, case):
    plain, device = causal_pair
    _assert_same(plain, device, plain.input_ids(PROMPTS), CASES[case])


def _steps(model, batch, options):
    """Per decode step: (rows run, uploads, fetches) as (label, bytes) lists."""
    config = model.default_config.replace(max_new_tokens=10, **options)
    step, search, cache, first = model._start(batch, config, range(len(batch)))
    rows: list[int] = []

    def counted(tokens, cache, sources):
        rows.append(len(tokens))
        return step(tokens, cache, sources)

    log = model.placement.transfers
    log.clear()  # what a request moves once (encoder inputs, empty cache) is not per step
    records = []
    for _ in decode_steps(counted, search, cache, first):
        records.append((rows[-1], list(log.uploads), list(log.fetches)))
        log.clear()
        assert all(isinstance(k, DeviceArray) for k in cache.keys + cache.values)
    _k_uploaded_at_most_once([uploads for _, uploads, _ in records])
    return records


def _k_uploaded_at_most_once(uploads_per_step) -> None:
    """The top-k count lives on the device, uploaded the first time a placement meets that k
    (whichever test ran first), never again."""
    ks = [size for uploads in uploads_per_step for label, size in uploads if label == "k"]
    assert ks in ([], [8]), f"k uploaded {len(ks)} times"


def _check_uploads(uploads, n, src_len, first_len, extra=None):
    bounds = {"input_ids": n * first_len * 8, "logits_positions": 8, "rows": n * 8, "k": 8, **(extra or {})}
    bounds["encoder_attention_mask"] = n * src_len * 8
    for label, size in uploads:
        assert label in bounds, f"unexpected upload {label!r} ({size} bytes)"
        assert size <= bounds[label], f"upload {label!r} moved {size} bytes, at most {bounds[label]} expected"


@pytest.mark.parametrize("case,k", [("greedy", 1), ("sample", 20), ("beam", 6)])
def test_only_token_ids_and_candidates_move_per_step(seq2seq_pair, case, k):
    _, model = seq2seq_pair
    src_len, vocab = max(map(len, SOURCES)), model.manifest.vocab_size
    records = _steps(model, SOURCES, CASES[case])
    assert len(records) > 3
    for i, (n, uploads, fetches) in enumerate(records):
        _check_uploads(uploads, n, src_len, first_len=1)
        assert fetches == [("values", n * k * 4), ("ids", n * k * 8), ("lse", n * 4)], f"step {i}"
        assert sum(size for _, size in fetches) < n * vocab * 4  # less than one row of logits each


def test_fallback_fetches_logits_but_never_kv(seq2seq_pair):
    _, model = seq2seq_pair
    vocab = model.manifest.vocab_size
    for n, uploads, fetches in _steps(model, SOURCES, CASES["fallback"]):
        _check_uploads(uploads, n, max(map(len, SOURCES)), first_len=1)
        assert fetches == [("logits", n * vocab * 4)]


@pytest.mark.export
def test_decoder_only_moves_ids_mask_and_candidates_only(causal_pair):
    plain, model = causal_pair
    batch = plain.input_ids(PROMPTS)
    prompt = max(map(len, batch))
    for i, (n, uploads, fetches) in enumerate(_steps(model, batch, CASES["greedy"])):
        length = prompt + i  # attention mask covers prompt + generated tokens
        extra = {"attention_mask": n * length * 8, "position_ids": n * prompt * 8}
        _check_uploads(uploads, n, 0, first_len=prompt, extra=extra)
        assert fetches == [("values", n * 4), ("ids", n * 8), ("lse", n * 4)]


def test_selector_matches_numpy(seq2seq_pair):
    """Device top-k = numpy's order (first id on ties), log-sum-exp to 1e-5, also for fp16."""
    device = seq2seq_pair[1].placement
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 1, 97)).astype(np.float32) * 4
    logits[2, 0, [3, 40, 41]] = 50.0  # a three-way tie at the top: lowest id first
    for dtype in (np.float32, np.float16):
        x = logits.astype(dtype).astype(np.float64)[:, 0]
        values, ids, lse = device.select(device.upload(logits.astype(dtype)), 7)
        order = np.argsort(-x, axis=-1, kind="stable")[:, :7]
        np.testing.assert_array_equal(ids, order)
        np.testing.assert_allclose(values, np.take_along_axis(x, order, axis=-1), rtol=1e-6)
        top = x.max(axis=-1)
        np.testing.assert_allclose(lse, top + np.log(np.exp(x - top[:, None]).sum(-1)), atol=1e-5)
    assert list(ids[2, :3]) == [3, 40, 41]


def test_take_gathers_rows_of_every_tensor(seq2seq_pair):
    device = seq2seq_pair[1].placement
    a = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    b = np.arange(8, dtype=np.float16).reshape(4, 2)
    rows = np.array([3, 3, 0], dtype=np.int64)
    got = device.take([device.upload(a), device.upload(b)], rows)
    np.testing.assert_array_equal(device.fetch(got[0]), a[rows])
    np.testing.assert_array_equal(device.fetch(got[1]), b[rows])
    assert got[0].shape == (3, 2, 3) and got[1].dtype == np.float16


def test_selection_plan_names_the_path(seq2seq_pair):
    _, model = seq2seq_pair
    base, eos, vocab = model.default_config, (2,), model.manifest.vocab_size
    assert plan_selection(base, eos, vocab).mode == "greedy"
    assert plan_selection(base.replace(num_beams=4), eos, vocab).k == 8  # max(2, 1 + #eos) · beams
    assert plan_selection(base.replace(do_sample=True, top_k=5), eos, vocab).k == 5
    assert plan_selection(base.replace(do_sample=True, top_k=0), eos, vocab) is None  # needs all V
    assert plan_selection(base.replace(do_sample=True, top_k=SAMPLE_TOP_K_CAP + 1), eos, vocab) is None
    assert plan_selection(base.replace(no_repeat_ngram_size=2), eos, vocab) is None


def test_device_loop_is_opt_in_on_cpu_and_default_on_gpus(tiny_artifact):
    from seqport.engine.placement import HostPlacement
    from seqport.runtimes.ort_device import wants_device_loop

    assert isinstance(sp.load(tiny_artifact).placement, HostPlacement)
    assert wants_device_loop(RuntimeOptions(provider="cuda"))
    assert wants_device_loop(RuntimeOptions(provider="TensorrtExecutionProvider"))
    assert not wants_device_loop(RuntimeOptions(provider="cuda", device_loop=False))
    assert not wants_device_loop(RuntimeOptions(backend="torch", provider="cuda"))


def test_device_loop_needs_onnxruntime():
    from seqport.engine.placement import open_placement

    with pytest.raises(ProviderError, match="device loop needs the onnxruntime backend"):
        open_placement({}, RuntimeOptions(backend="torch", device_loop=True))


def test_stream_runs_on_the_device(seq2seq_pair):
    plain, device = seq2seq_pair
    expected = plain.generate(SOURCES, max_new_tokens=8)
    pieces: dict[int, list[int]] = {}
    for step in device.stream(SOURCES, max_new_tokens=8):
        pieces.setdefault(step.index, []).append(step.token_id)
    for i, result in enumerate(expected):
        assert pieces[i][: len(result.ids)] == result.ids


@pytest.fixture(scope="module")
def preallocated_pair(tiny_artifact, tmp_path_factory):
    """The tiny checkpoint exported with kv_cache="preallocated": (host loop, device loop)."""
    pytest.importorskip("torch")
    from seqport.export.pipeline import export_model

    out = tmp_path_factory.mktemp("preallocated") / "artifact"
    export_model(tiny_artifact.parent / "tiny_checkpoint", out, progress=False, kv_cache="preallocated")
    return sp.load(out), sp.load(out, options=DEVICE)


@pytest.mark.export
@pytest.mark.parametrize("case", ["greedy", "beam", "sample", "fallback"])
def test_preallocated_cache_equals_growing_on_both_loops(seq2seq_pair, preallocated_pair, case):
    grown, _ = seq2seq_pair
    host, device = preallocated_pair
    _assert_same(grown, host, SOURCES, CASES[case])
    _assert_same(grown, device, SOURCES, CASES[case])


@pytest.mark.export
def test_preallocated_buffers_are_written_in_place_on_the_device(preallocated_pair):
    """Each step uploads only the new ids and their cache_position (8 bytes a token); while the
    rows stay the same the K/V buffers keep their device memory (ScatterElements in place)."""
    _, model = preallocated_pair
    src_len = max(map(len, SOURCES))
    config = model.default_config.replace(max_new_tokens=10, **CASES["greedy"])
    step, search, cache, first = model._start(SOURCES, config, range(len(SOURCES)))
    assert cache.capacity == 1 + 10 and cache.length == 0
    log, pointers, uploads = model.placement.transfers, [], []
    log.clear()
    for _ in decode_steps(step, search, cache, first):
        _check_uploads(log.uploads, len(SOURCES), src_len, first_len=1, extra={"cache_position": 8})
        uploads.append(list(log.uploads))
        assert [label for label, _ in log.fetches] == ["values", "ids", "lse"]
        pointers.append(cache.keys[0].handle.data_ptr())
        log.clear()
    _k_uploaded_at_most_once(uploads)
    assert cache.length == len(pointers) and len(set(pointers)) == 1
