"""The host's short way through a decode step of lockstep encoder-decoder rows (issue #16).

Between two decoder calls the CPU caches are cold (the call streamed the weights through them),
so every Python and numpy operation there costs several times its warm price; on a small model
(the bundled translator: a 0.8 ms step) the engine's share of a step is set by how *many* it
does (docs/benchmarks.md, "Engine overhead"). The general step maps logical names to graph
names, checks the feeds, builds the cache's feed dict and maps the outputs back, every step.
Once a step has gone that way with the rows of the step before, nothing can change but the new
tokens, their position, the all-ones mask and the past K/V, all made by the engine; the lane
keeps that step's graph-named feeds and writes only those entries:

    feeds[input_ids] = tokens (N, 1); feeds[position_ids] = P; feeds[attention_mask] = ones (N, P+1)
    feeds[past_*] = the cache's arrays; outputs = runtime.run(feeds); the cache takes present_*

Used by engine/seq2seq.py on the host placement with a growing cache and a decoder that takes
position_ids and attention_mask; any other case (a device, preallocated buffers, beams or rows
leaving, which change the rows) takes the general step.
"""

from __future__ import annotations

import numpy as np

from seqport.engine.device_array import Chosen
from seqport.engine.feeds import Signature
from seqport.engine.kv_cache import KVCache, layer_names
from seqport.engine.runtime import Runtime
from seqport.engine.step_inputs import LockstepInputs


class HostLane:
    """A request's decoder feeds kept between its steps (see the module docstring).

    Args:
        signature: the decoder's signature (logical → graph names).
        runtime: the loaded decoder.
        lockstep: the model's position/mask views.
        num_layers: decoder layers.
        graph_greedy: return the greedy head's `Chosen` instead of the last position's logits.
    """

    def __init__(
        self, signature: Signature, runtime: Runtime, lockstep: LockstepInputs, num_layers: int, graph_greedy: bool
    ) -> None:
        inputs, outputs = signature.inputs, signature.outputs
        self._runtime, self._lockstep = runtime, lockstep
        self._ids, self._positions = inputs["input_ids"].name, inputs["position_ids"].name
        self._mask = inputs["attention_mask"].name
        self._past = tuple(inputs[name].name for name in layer_names("past", num_layers))  # keys, then values
        present = [outputs[name].name for name in layer_names("present", num_layers)]
        self._present_keys, self._present_values = present[:num_layers], present[num_layers:]
        self._greedy = (outputs["greedy_ids"].name, outputs["greedy_logprobs"].name) if graph_greedy else None
        self._logits = outputs["logits"].name
        self._graph_names = tuple((logical, spec.name) for logical, spec in inputs.items())
        self._feeds: dict[str, np.ndarray] | None = None
        self._length = 0  # the cache's past length P after the last step

    @property
    def ready(self) -> bool:
        """Whether a checked step has given the lane its feeds."""
        return self._feeds is not None

    def adopt(self, values: dict[str, np.ndarray], cache: KVCache) -> None:
        """Keep the graph-named feeds of a step that just ran checked (`values`: its logical
        feeds without the cache's); the next steps write only what changes."""
        merged = {**values, **cache.feeds()}
        self._feeds = {graph: merged[logical] for logical, graph in self._graph_names}
        self._length = cache.length

    def drop(self) -> None:
        """Forget the feeds (the rows changed, or the request ended)."""
        self._feeds = None

    def step(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray | Chosen:
        """One decoder call for int64 (N, 1) new tokens of the adopted rows; the cache then holds
        the present K/V. Returns the head's Chosen, or the last position's logits float (N, V)."""
        feeds, rows, past = self._feeds, len(tokens), self._length
        feeds[self._ids] = tokens
        feeds[self._positions] = self._lockstep.positions(rows, past, 1)  # (N, 1) view
        feeds[self._mask] = self._lockstep.mask(rows, past + 1)  # (N, P+1) view
        feeds.update(zip(self._past, cache.keys + cache.values))
        outputs = self._runtime.run(feeds)
        cache.hold([outputs[name] for name in self._present_keys], [outputs[name] for name in self._present_values])
        self._length = past + 1  # the cache's length, kept here: reading it is a numpy shape lookup
        if self._greedy is not None:
            return Chosen(outputs[self._greedy[0]], outputs[self._greedy[1]])  # (N,), (N,)
        return outputs[self._logits][:, -1, :]  # (N, V)
