"""Switching the engine's greedy fast paths off in tests, to compare them with the general path."""

from __future__ import annotations


def generate_sequences(model, inputs, config, head: bool, lane: bool, monkeypatch) -> list:
    """generate_ids' first sequence per input with the decoder's greedy head and the lane each on
    or off (instance attributes shadow the model's methods)."""
    with monkeypatch.context() as patch:
        if not head:
            patch.setattr(model, "_graph_greedy", lambda config, eos: False, raising=False)
        if not lane:
            patch.setattr(model, "_lane", lambda cache, graph_greedy: None, raising=False)
        return [r.sequences[0] for r in model.generate_ids(inputs, config)]
