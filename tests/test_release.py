"""A request's buffers are released when its decode loop ends, also when the caller abandons a
`stream()` generator early (whisper's `_main_loop` try/finally): on the device placement the
KV cache and the encoder's cross K/V are device memory that must not wait for the GC."""

from __future__ import annotations

import pytest

import seqport.engine as sp
from seqport.engine.device_array import DeviceArray
from seqport.engine.runtime import RuntimeOptions

SOURCES = [[10, 11, 12, 13, 2], [20, 21, 2]]


def _watched(model, monkeypatch) -> list:
    """Record (step, cache) of every batch the model starts."""
    started = []
    start = model._start

    def watching_start(*args):
        step, search, cache, first = start(*args)
        started.append((step, cache))
        return step, search, cache, first

    monkeypatch.setattr(model, "_start", watching_start)
    return started


@pytest.mark.parametrize("device_loop", [False, True], ids=["host", "device"])
def test_closing_a_stream_early_releases_cache_and_step(tiny_artifact, monkeypatch, device_loop):
    model = sp.load(tiny_artifact, options=RuntimeOptions(device_loop=device_loop))
    started = _watched(model, monkeypatch)
    stream = model.stream(SOURCES, max_new_tokens=20, eos_token_ids=[model.manifest.vocab_size - 1])
    next(stream), next(stream)
    (step, cache), = started
    kind = DeviceArray if device_loop else object
    assert cache.keys and all(isinstance(k, kind) for k in cache.keys)  # held while streaming
    assert step._all_cross
    stream.close()  # the caller walks away after 2 tokens
    assert cache.keys == [] and cache.values == []
    assert step._all_cross == {} and step._cross == {}


def test_generate_releases_every_batch(tiny_artifact, monkeypatch):
    model = sp.load(tiny_artifact)
    started = _watched(model, monkeypatch)
    model.generate_ids(SOURCES, model.default_config.replace(max_new_tokens=4, batch_size=1))
    assert len(started) == 2
    assert all(cache.keys == [] and step._all_cross == {} for step, cache in started)


def test_a_failing_step_still_releases(tiny_artifact, monkeypatch):
    model = sp.load(tiny_artifact)
    started = _watched(model, monkeypatch)
    stream = model.stream(SOURCES, max_new_tokens=5)
    next(stream)
    (step, cache), = started
    monkeypatch.setattr(cache, "take", lambda rows: (_ for _ in ()).throw(RuntimeError("boom")))
    monkeypatch.setattr(step, "_decode", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        list(stream)
    assert cache.keys == [] and step._all_cross == {}
