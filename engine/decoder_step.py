"""What every model kind's step shares: the placement, the token selection and the
logits position, around one `run_decoder` call.

A model kind subclasses `DecoderStep` once (seq2seq._Seq2SeqStep, causal_lm._CausalStep) and
the same step serves the host and the device loop: values go through the placement, which
is the identity on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from seqport.engine.device_array import Candidates, Chosen
from seqport.engine.host_lane import HostLane
from seqport.engine.kv_cache import KVCache
from seqport.engine.placement import Placement, Selection, Value

#: GeneratingModel.run_decoder: (logical values, cache, trusted names) → logical outputs.
RunDecoder = Callable[[dict[str, Value], KVCache, frozenset[str]], dict[str, Value]]


class DecoderStep:
    """Base of the decode loop's step functions (see decode_loop.StepFn).

    With `graph_greedy` set (plain greedy search on the host, a decoder with the greedy head:
    export/greedy_head.py), a step returns the head's `Chosen` ids and log-probabilities and the
    search never reads the (N, V) logits.

    Args:
        run_decoder: the model's GeneratingModel.run_decoder.
        placement: where the model runs.
        selection: how the placement selects tokens, or None for full logits.
    """

    def __init__(self, run_decoder: RunDecoder, placement: Placement, selection: Selection | None) -> None:
        self._run_decoder, self._placement, self._selection = run_decoder, placement, selection
        self._positions: dict[int, Value] = {}
        self.graph_greedy = False  # the decoder's greedy head chooses (GeneratingModel._start sets it)
        self.lane: HostLane | None = None  # the host's short step, where it applies (engine/host_lane.py)

    def _decode(
        self, values: dict[str, Value], cache: KVCache, trusted: frozenset[str] = frozenset()
    ) -> np.ndarray | Candidates | Chosen:
        """Run the decoder for the last position only; its logits as the search needs them, or
        the tokens its greedy head chose."""
        values["logits_positions"] = self._logits_position(values["input_ids"].shape[1])
        outputs = self._run_decoder(values, cache, trusted)
        if self.graph_greedy:
            logits = outputs["logits"][:, -1, :]  # (N, V) view: read only on a min_new_tokens step whose argmax is EOS
            return Chosen(outputs["greedy_ids"], outputs["greedy_logprobs"], logits)  # (N,), (N,)
        return self._placement.logits(outputs["logits"], self._selection)  # from (N, 1, V)

    def _logits_position(self, new: int) -> Value:
        if new not in self._positions:  # [T - 1]: made (uploaded) once per distinct T
            self._positions[new] = self._placement.upload(np.array([new - 1], dtype=np.int64), "logits_positions")
        return self._positions[new]

    def release(self) -> None:
        """Drop what the step holds for its request (encoder outputs on a device)."""
        self._positions.clear()
