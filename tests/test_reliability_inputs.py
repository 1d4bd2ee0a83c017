"""Bad inputs, non-finite options, impossible requests and NaN logits: each a SeqportError with a
message that says what to do, raised before any work where it can be (issue #12)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

import seqport.engine as sp
from seqport.engine.config import GenerationConfig
from seqport.engine.errors import ConfigError, InputError, RuntimeFailure


@pytest.mark.parametrize(
    "inputs, match",
    [
        ("caf\udce9", r"input 0 is not valid Unicode: '\\udce9' at character 3"),
        (["fine", "x\ud800y"], r"input 1 is not valid Unicode"),
        (None, "inputs is None: pass a text"),
        (["fine", None], "input 1 is a NoneType"),
        ([[5.0, 7.5]], "input 0 holds float 5.0: token ids must be integers"),
        ([[5, 6], [True, 7]], "input 1 holds bool True"),
        ([[5, None]], "input 0 holds NoneType None"),
        ([[5, 6], None], "input 1 is a NoneType: token-id inputs must all be lists"),
        (np.array([[5.0, 6.0]]), "input 0 is a 1-D float64 array"),
        ([np.array([True, False])], "input 0 is a 1-D bool array"),
        ([5, 6, 7], r"wrap it as \[\[...\]\]"),
        (42, "inputs is a int"),
    ],
)
def test_bad_inputs_are_input_errors(model, inputs, match):
    with pytest.raises(InputError, match=match):
        model.generate(inputs, max_new_tokens=2)


def test_numpy_integer_ids_are_fine(model):
    expected = model.generate([[5, 6, 7, 1]], max_new_tokens=3)[0].sequences[0].ids
    for inputs in (np.array([[5, 6, 7, 1]], dtype=np.int32), [np.array([5, 6, 7, 1])], [[np.int64(5), 6, 7, 1]]):
        assert model.generate(inputs, max_new_tokens=3)[0].sequences[0].ids == expected


def test_score_and_stream_refuse_bad_inputs_too(model):
    with pytest.raises(InputError, match="holds float"):
        model.score([[5, 6, 1]], [[5.5, 1]])
    with pytest.raises(InputError, match="not valid Unicode"):
        list(model.stream("\udcff abc", max_new_tokens=2))


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("temperature", float("inf"), "temperature must be > 0 and finite, got inf"),
        ("temperature", float("nan"), "temperature must be > 0 and finite, got nan"),
        ("length_penalty", float("nan"), r"length_penalty must be a number \(finite\), got nan"),
        ("length_penalty", float("-inf"), r"length_penalty must be a number \(finite\)"),
        ("repetition_penalty", float("inf"), "repetition_penalty must be > 0 and finite"),
        ("top_p", float("nan"), r"top_p must be in \(0, 1\]"),
        ("min_p", float("nan"), r"min_p must be in \[0, 1\)"),
        ("stop", "end\udcff", "stop strings must be non-empty strings of valid Unicode"),
        ("max_memory_bytes", 0, "max_memory_bytes must be an integer >= 1"),
    ],
)
def test_non_finite_options_are_config_errors(option, value, match):
    with pytest.raises(ConfigError, match=match):
        GenerationConfig(**{option: value})


def test_suppressing_every_token_fails_up_front(model):
    vocab = model.manifest.vocab_size
    with pytest.raises(ConfigError, match=f"forbid all {vocab} tokens"):
        model.generate("hello", suppress_tokens=list(range(vocab)))
    words = [[i] for i in range(vocab)]
    with pytest.raises(ConfigError, match=f"forbid all {vocab} tokens"):
        model.generate("hello", bad_words_ids=words, suppress_tokens=[1], eos_token_ids=[1])
    # a lone EOS in bad_words_ids is ignored (as in transformers): EOS stays possible, not an error
    assert model.generate("hello", bad_words_ids=words, eos_token_ids=[1], max_new_tokens=3)[0].sequences[0].ids == []
    half = list(range(0, vocab, 2))
    with pytest.raises(ConfigError, match=f"forbid all {vocab} tokens"):
        odd = [[i] for i in range(1, vocab, 2)]
        model.generate("hello", suppress_tokens=half, bad_words_ids=odd, eos_token_ids=[2])


def test_options_that_forbid_everything_at_one_step_fail_at_that_step(model):
    """min_new_tokens forbids EOS, suppress_tokens the rest: caught at step 1, never NaN then id 0."""
    eos = model.manifest.special_ids.eos
    rest = [i for i in range(model.manifest.vocab_size) if i not in eos]
    for sample in (False, True):
        with pytest.raises(ConfigError, match="every token is forbidden at decoding step 1 for input 0"):
            model.generate("hello", suppress_tokens=rest, min_new_tokens=2, do_sample=sample, seed=0)


def _translator_like() -> SimpleNamespace:
    """The bundled translator's geometry (export/models/translator/config.json)."""
    kv = SimpleNamespace(num_layers=3, num_kv_heads=4, head_dim=64, dtype="float32")
    return SimpleNamespace(kv=kv, architecture="encoder-decoder", vocab_size=8000, max_positions=256)


def test_memory_estimate_counts_kv_cache_and_logits(tiny_artifact):
    from seqport.engine.memory_estimate import estimate_request_bytes

    manifest = sp.load(tiny_artifact).manifest
    kv = manifest.kv
    config = GenerationConfig(num_beams=4, max_new_tokens=10)
    per_token = 2 * kv.num_layers * kv.num_kv_heads * kv.head_dim * 4
    rows, source = 2 * 4, 6
    expected = 2 * rows * 11 * per_token + rows * source * per_token + rows * manifest.vocab_size * 12
    assert estimate_request_bytes(manifest, config, [[5] * source, [6] * 3]) == expected
    assert estimate_request_bytes(manifest, config.replace(batch_size=1), [[5] * source, [6] * 3]) == expected // 2


def test_ten_thousand_beams_on_the_translator_fail_fast_with_estimate_and_limit():
    from seqport.engine.config import DEFAULT_MAX_MEMORY_BYTES
    from seqport.engine.memory_estimate import check_request

    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"needs about \d+\.\d\d GiB .*more than max_memory_bytes=4294967296"):
        check_request(_translator_like(), GenerationConfig(num_beams=10000, max_new_tokens=64), [[5, 6, 7, 2]])
    assert time.perf_counter() - start < 0.1
    assert DEFAULT_MAX_MEMORY_BYTES == 4 * 2**30
    raised = GenerationConfig(num_beams=10000, max_new_tokens=64, max_memory_bytes=2**40)
    check_request(_translator_like(), raised, [[5]])
    check_request(_translator_like(), GenerationConfig(num_beams=5, max_new_tokens=128), [[5] * 200] * 32)


def test_prefix_longer_than_max_positions_is_refused():
    from seqport.engine.memory_estimate import check_request

    with pytest.raises(ConfigError, match="prefix_ids holds 256 ids.*leaving none to generate"):
        check_request(_translator_like(), GenerationConfig(prefix_ids=[5] * 256), [[5, 2]])
    check_request(_translator_like(), GenerationConfig(prefix_ids=[5] * 255), [[5, 2]])


def test_generate_checks_the_request_before_any_work(model):
    with pytest.raises(ConfigError, match="prefix_ids holds 40 ids"):
        model.generate([[5, 6, 1]], prefix_ids=[5] * 40)
    with pytest.raises(ConfigError, match="more than max_memory_bytes=1000"):
        model.generate([[5, 6, 1]], max_memory_bytes=1000)


class _NaNAt:
    """Wraps the decoder runtime: the logits of `row` become `value` at decoder call `call`."""

    def __init__(self, runtime, call: int, row: int, value: float) -> None:
        self._runtime, self._call, self._row, self._value, self.calls = runtime, call, row, value, 0

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def run(self, feeds, **kwargs):
        outputs = self._runtime.run(feeds, **kwargs)
        self.calls += 1
        if self.calls == self._call:
            logits = outputs["logits"].copy()
            logits[self._row, :, 7] = self._value
            outputs = {**outputs, "logits": logits}
        return outputs


@pytest.mark.parametrize("value, found", [(float("nan"), "NaN"), (float("inf"), r"\+inf")])
@pytest.mark.parametrize(
    "options",
    [{}, {"min_new_tokens": 5}, {"do_sample": True, "seed": 1, "min_new_tokens": 5}, {"num_beams": 2}],
    ids=["plain-greedy", "greedy-with-processors", "sampling", "beam"],
)
def test_nan_logits_at_step_3_are_a_runtime_failure_naming_step_and_row(tiny_artifact, value, found, options):
    model = sp.load(tiny_artifact)
    inputs = [[5, 6, 7, 1], [8, 9, 10, 11, 1]]  # longest first: row 1 serves input 0
    clean = model.generate(inputs, max_new_tokens=8, **options)
    assert all(len(r.sequences[0].ids) >= 3 for r in clean)  # both inputs reach step 3
    model.runtimes["decoder"] = _NaNAt(model.runtimes["decoder"], call=3, row=1, value=value)
    with pytest.raises(RuntimeFailure, match=f"not finite at decoding step 3, row 1 \\(input .\\): {found}"):
        model.generate(inputs, max_new_tokens=8, **options)


def test_minus_inf_entries_in_the_raw_logits_are_legitimate():
    from seqport.engine.logit_checks import check_finite_logits

    logits = np.zeros((3, 11), np.float32)
    logits[:, 4] = -np.inf
    check_finite_logits(logits, 1, np.arange(3))
    logits[2] = -np.inf
    with pytest.raises(RuntimeFailure, match="step 1, row 2 .*-inf everywhere"):
        check_finite_logits(logits, 1, np.arange(3))


def test_tokenizer_refuses_invalid_unicode_in_any_text(model):
    """--prefix and stop-word texts go through encode_plain: the error names the text, not an index."""
    with pytest.raises(InputError, match=r"text 'ab\\udcffc' is not valid Unicode"):
        model.tokenizer.encode_plain("ab\udcffc")
    with pytest.raises(InputError, match="input 1 is not valid Unicode"):
        model.tokenizer.encode(["fine", "\ud800"])
