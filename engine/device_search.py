"""Search over the k candidates a device selector returns instead of (N, V) logits.

Which path a request takes (see docs/gpu.md):

- greedy search without processors: the device returns each row's argmax (top-1) and the
  row's log-sum-exp (for the token's logprob);
- sampling whose processors are only the sampling warpers (temperature, top_k, top_p, min_p)
  with 1 <= top_k <= SAMPLE_TOP_K_CAP: the device returns the top_k logits and ids; the host
  applies temperature/top-p/min-p and draws among them with the same numpy functions and
  generators as over full logits (top-p and min-p come after top-k in transformers' order, so
  they only ever see those k);
- beam search without processors: the device returns the top max(2, 1 + #EOS) · num_beams
  log-probabilities of each beam, which hold the input's best candidates over all beams;
- anything else (repetition penalty, no-repeat-ngram, bad words, min_new_tokens, forced or
  suppressed tokens, sampling with top_k 0 or above the cap) needs the whole distribution: the
  device fetches the last position's full logits and the ordinary search runs (the KV cache
  still stays on the device).

One documented difference: a candidate tied with the k-th best logit is kept by the host's
top_k_filter but not by the device's top-k (ties of float logits are rare in real models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqport.engine import processors as proc
from seqport.engine.beam import BeamSearch, _Beams
from seqport.engine.config import GenerationConfig
from seqport.engine.decode_loop import make_search
from seqport.engine.device_array import Candidates
from seqport.engine.placement import Selection
from seqport.engine.search import Search, TokenSearch, log_softmax_at
from seqport.engine.stopping import StopStrings

#: most candidates per row fetched for sampling; a larger top_k (or none) fetches full logits.
SAMPLE_TOP_K_CAP = 64


def plan_selection(config: GenerationConfig, eos: tuple[int, ...], vocab_size: int) -> Selection | None:
    """The device selection `config` allows, or None when the host needs full logits."""
    processors = proc.build_processors(config, eos)
    if config.num_beams > 1:
        keep = max(2, 1 + len(eos)) * config.num_beams
        return None if processors else Selection("beam", min(keep, vocab_size))
    if not config.do_sample:
        return None if processors else Selection("greedy", 1)
    only_warpers = all(getattr(p, "func", None) is proc._warp for p in processors)
    if only_warpers and 0 < config.top_k <= SAMPLE_TOP_K_CAP:
        return Selection("sample", min(config.top_k, vocab_size))
    return None


def as_candidates(values: np.ndarray, ids: np.ndarray, lse: np.ndarray, selection: Selection) -> Candidates:
    """A device selector's top-k (values, ids (N, k), log-sum-exp (N,)) as the search reads it:
    raw logits plus the row normalizer (greedy), log-probabilities (beam), raw logits (sample)."""
    values, lse = values.astype(np.float64), lse.astype(np.float64)
    if selection.mode == "greedy":
        return Candidates(values, ids, lse)
    if selection.mode == "beam":
        return Candidates(values - lse[:, None], ids)  # log-probabilities
    return Candidates(values, ids)


class DeviceTokenSearch(TokenSearch):
    """Greedy search or sampling fed with `Candidates` (see the module docstring)."""

    def _select(self, logits: np.ndarray | Candidates) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(logits, Candidates):
            return super()._select(logits)
        cand = logits.by_id()  # vocabulary order: same ties and inverse-CDF draws as full logits
        scores = proc.apply(self._processors, cand.values, self._history, self._step)  # (N, k)
        pick = self._choose(scores, self._active)  # (N,) index into the k candidates
        rows = np.arange(len(pick))
        if cand.normalizer is not None:  # greedy: the distribution is the whole vocabulary
            logprobs = scores[rows, pick] - cand.normalizer
        else:  # top-k sampling: the processed distribution is these k candidates
            logprobs = log_softmax_at(scores, pick)
        return cand.ids[rows, pick].astype(np.int64), logprobs


class DeviceBeamSearch(BeamSearch):
    """Beam search fed with `Candidates` holding log-probabilities (see the module docstring)."""

    def _scores(self, logits: np.ndarray | Candidates) -> np.ndarray | Candidates:
        return logits if isinstance(logits, Candidates) else super()._scores(logits)

    def _candidates(self, beams: _Beams, scores: np.ndarray | Candidates) -> tuple[np.ndarray, ...]:
        if not isinstance(scores, Candidates):
            return super()._candidates(beams, scores)
        k, width = scores.ids.shape
        totals = (scores.values + beams.scores[:, None]).ravel()  # (K·k,)
        parent = np.repeat(np.arange(k), width)  # (K·k,)
        token = scores.ids.ravel()
        # best first; ties by (parent, token) like the flat (K·V,) index over full scores
        order = np.lexsort((token, parent, -totals))[: min(self._keep, totals.size)]
        return parent[order], token[order], totals[order], scores.values.ravel()[order]


def make_device_search(
    config: GenerationConfig,
    first_tokens: np.ndarray,
    eos: tuple[int, ...],
    indices: Sequence[int] | None,
    stops: StopStrings | None,
) -> Search:
    """make_search's strategies, accepting `Candidates` as well as full logits."""
    return make_search(
        config, first_tokens, eos, indices, stops, token_search=DeviceTokenSearch, beam_search=DeviceBeamSearch
    )
