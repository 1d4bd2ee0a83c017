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


def count_full_logits_and_forced_steps(monkeypatch) -> tuple[list[int], list[int]]:
    """Watch TokenSearch while min_new_tokens forbids EOS: the steps that took the processor path
    over the (N, V) logits, and the steps whose head chose a forbidden EOS (then the search takes
    the best other id of that row's logits). Both lists grow by one per such step."""
    from seqport.engine.search import TokenSearch

    full, forced = [], []
    select, without_eos = TokenSearch._select, TokenSearch._chosen_without_eos

    def counted_select(search, logits):
        full.append(len(logits))
        return select(search, logits)

    def counted_without_eos(search, chosen):
        if not search._eos.isdisjoint(chosen.ids.tolist()):
            forced.append(1)
        return without_eos(search, chosen)

    monkeypatch.setattr(TokenSearch, "_select", counted_select)
    monkeypatch.setattr(TokenSearch, "_chosen_without_eos", counted_without_eos)
    return full, forced
