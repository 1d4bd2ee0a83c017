"""The host's short way through a decode step of lockstep encoder-decoder rows (issue #16).

Between two decoder calls the CPU caches are cold (the call streamed the weights through them),
so every Python and numpy operation there costs several times its warm price; on a small model
(the bundled translator: a 0.8 ms step) the engine's share of a step is set by how *many* it
does (docs/benchmarks.md, "Engine overhead"). The general step maps logical names to graph
names, checks the feeds, builds the cache's feed dict and maps the outputs back, every step.
Once a step has gone that way with the rows of the step before, nothing can change but the new
tokens, their position, the all-ones mask and the past K/V, all made by the engine; the lane
keeps that step's graph-named feeds and writes only those entries:

    feeds[input_ids] = tokens (N, 1); feeds[position_ids], feeds[attention_mask] = P, ones (N, P+1)
    outputs = runtime.run(feeds); feeds[past_*] = the cache's arrays = outputs' present_*

Used by engine/seq2seq.py on the host placement with a growing cache and a decoder that takes
position_ids and attention_mask; any other case (a device, preallocated buffers, beams or rows
leaving, which change the rows) takes the general step.
"""

from __future__ import annotations

from operator import itemgetter

import numpy as np

from seqport.engine.device_array import Chosen
from seqport.engine.feeds import Signature
from seqport.engine.kv_cache import KVCache, layer_names
from seqport.engine.runtime import Runtime
from seqport.engine.step_inputs import LockstepInputs

#: builds a NamedTuple from a tuple in C: a Python-level frame costs several µs between two
#: decoder calls, when the caches are cold (the module docstring)
_new_tuple = tuple.__new__


class HostLane:
    """A request's decoder feeds kept between its steps (see the module docstring).

    Args:
        signature: the decoder's signature (logical → graph names).
        runtime: the loaded decoder.
        lockstep: the model's position/mask views.
        num_layers: decoder layers.
        graph_greedy: return the greedy head's `Chosen` instead of the last position's logits.

    Attributes:
        ready: whether a checked step has given the lane its feeds (a plain attribute, not a
            property: it is read every decode step).
    """

    def __init__(
        self, signature: Signature, runtime: Runtime, lockstep: LockstepInputs, num_layers: int, graph_greedy: bool
    ) -> None:
        inputs, outputs = signature.inputs, signature.outputs
        self._runtime, self._lockstep, self._layers = runtime, lockstep, num_layers
        self._ids, self._positions = inputs["input_ids"].name, inputs["position_ids"].name
        self._mask = inputs["attention_mask"].name
        self._past = tuple(inputs[name].name for name in layer_names("past", num_layers))  # keys, then values
        present = [outputs[name].name for name in layer_names("present", num_layers)]  # keys, then values
        chosen = [outputs["greedy_ids"].name, outputs["greedy_logprobs"].name] if graph_greedy else []
        # one C call reads every output the lane uses: present keys, values, the head's if it chooses,
        # then the logits (beside the head's choice for a min_new_tokens step whose argmax is EOS)
        self._pick = itemgetter(*present, *chosen, outputs["logits"].name)
        self._graph_greedy = graph_greedy
        self._graph_names = tuple((logical, spec.name) for logical, spec in inputs.items())
        self._feeds: dict[str, np.ndarray] = {}
        self._length = 0  # the cache's past length P after the last step
        self._next_views = lockstep.next_views  # (rows, past) → views: looked up without a call
        self.ready = False

    def adopt(self, values: dict[str, np.ndarray], cache: KVCache) -> None:
        """Keep the graph-named feeds of a step that just ran checked (`values`: its logical
        feeds without the cache's); the next steps write only what changes."""
        merged = {**values, **cache.feeds()}
        self._feeds = {graph: merged[logical] for logical, graph in self._graph_names}
        self._length = cache.length
        self.ready = True

    def drop(self) -> None:
        """Forget the feeds (the rows changed, or the request ended)."""
        self._feeds, self.ready = {}, False

    def step(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray | Chosen:
        """One decoder call for int64 (N, 1) new tokens of the adopted rows; the cache then holds
        the present K/V. Returns the head's Chosen, or the last position's logits float (N, V).

        The present K/V go into the kept feeds as the next step's past right after the call:
        while the lane is ready nothing else changes the cache (rows leaving or beams regrouping
        give the decode loop new row sources, and the step drops the lane)."""
        feeds, past, layers = self._feeds, self._length, self._layers
        feeds[self._ids] = tokens
        rows = len(tokens)
        # (N, 1) positions and (N, P+1) mask, made once per shape for every request
        views = self._next_views.get((rows, past)) or self._lockstep.next_step(rows, past)
        feeds[self._positions], feeds[self._mask] = views
        got = self._pick(self._runtime.run(feeds))  # L keys, L values (N, H, P+1, D), [ids, logprobs,] logits
        feeds.update(zip(self._past, got))  # the first 2L: the next step's past
        cache.keys, cache.values = got[:layers], got[layers : 2 * layers]  # KVCache.hold without its call
        self._length = past + 1  # the cache's length, kept here: reading it is a numpy shape lookup
        logits = got[-1][:, -1, :]  # (N, V)
        if self._graph_greedy:
            return _new_tuple(Chosen, (got[-3], got[-2], logits))  # Chosen(...) without a Python __new__
        return logits
