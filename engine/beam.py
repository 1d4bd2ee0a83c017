"""Beam search with transformers' semantics (generation/utils.py `_beam_search`, v4.50+).

Per input, `num_beams` running beams start from the decoder start (+ prefix): beam 0 with score
0, the others with -1e9, so the first step expands beam 0 only. Each step:

1. scores = processors(log_softmax(logits)); candidates = running score + scores, (K·V,).
2. The top max(2, 1 + #EOS) · K candidates, best first.
3. Candidates that end (EOS, stop string, or max_new_tokens reached) *and* rank in the first K
   become finished hypotheses scored sum_logprobs / n ** length_penalty, n = generated tokens
   including the EOS; at most K finished are kept, best first.
4. The K best candidates that did not end are the next running beams; the KV cache follows
   their parents (StepDecision.rows → KVCache.take).
5. An input is done when its K finished slots are full and: early_stopping=True; or the best
   running beam can no longer beat the worst finished one, estimated as best_running / n **
   length_penalty (early_stopping=False), or / max_new_tokens ** length_penalty
   ("never" with length_penalty > 0). Done inputs leave the active batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seqport.engine import processors as proc
from seqport.engine.config import GenerationConfig
from seqport.engine.logit_checks import check_finite_logits
from seqport.engine.results import GeneratedSequence as Hypothesis
from seqport.engine.results import GenerationResult
from seqport.engine.sampling import log_softmax
from seqport.engine.search import StepDecision
from seqport.engine.stopping import StopStrings

_NEG = -1.0e9  # transformers' "impossible" score: finite, so -inf arithmetic never yields NaN


@dataclass
class _Beams:
    """Mutable state of one input: running beams and the finished hypotheses (best first)."""

    tokens: np.ndarray  # int64 (K, n) generated tokens of each running beam
    logprobs: np.ndarray  # float64 (K, n) processed log-probability of each of those tokens
    scores: np.ndarray  # float64 (K,) sum of logprobs (+ -1e9 for impossible beams)
    finished: list[Hypothesis] = field(default_factory=list)
    done: bool = False

    @classmethod
    def start(cls, k: int) -> _Beams:
        scores = np.full(k, _NEG)
        scores[0] = 0.0
        return cls(np.zeros((k, 0), np.int64), np.zeros((k, 0)), scores)


class BeamSearch:
    """Beam search over a batch of inputs (see the module docstring for the exact semantics).

    Args:
        first_tokens: int64 (B, T0) decoder start (+ prefix) or prompt of each input.
        eos: ids that end a hypothesis.
        config: num_beams, length_penalty, early_stopping, num_return_sequences, max_new_tokens.
        processors: applied to the log-softmaxed scores (transformers' beam order).
        stops: stop strings, or None; a candidate whose text contains one ends like EOS.
    """

    def __init__(
        self,
        first_tokens: np.ndarray,
        eos: Sequence[int],
        config: GenerationConfig,
        processors: list[proc.Processor],
        stops: StopStrings | None = None,
    ) -> None:
        self._first, self._eos, self._k = first_tokens, set(eos), config.num_beams
        self._keep = max(2, 1 + len(self._eos)) * self._k
        self._max_new, self._returned = config.max_new_tokens, config.num_return_sequences
        self._penalty, self._early = config.length_penalty, config.early_stopping
        self._processors, self._stops = processors, stops
        self._beams = [_Beams.start(self._k) for _ in range(len(first_tokens))]
        self._active = np.arange(len(first_tokens))  # inputs still searching
        self._step = 0

    def row_sources(self) -> np.ndarray:
        return np.repeat(self._active, self._k)  # K consecutive rows per active input

    def update(self, logits: np.ndarray) -> StepDecision | None:
        scores = self._scores(logits)  # (N, V)
        self._step += 1
        rows, tokens, still = [], [], []
        for i, source in enumerate(self._active):
            beams = self._beams[source]
            parents = self._advance(beams, scores[i * self._k : (i + 1) * self._k])
            if not beams.done:
                still.append(source)
                rows.append(i * self._k + parents)
                tokens.append(beams.tokens[:, -1])
        self._active = np.asarray(still, dtype=np.int64)
        if not still:
            return None
        return StepDecision(np.concatenate(tokens).astype(np.int64), np.concatenate(rows).astype(np.int64))

    def finalize(self) -> list[GenerationResult]:
        return [GenerationResult(beams.finished[: self._returned]) for beams in self._beams]

    def _history(self) -> np.ndarray:
        """int64 (N, T0 + step): each active row's whole decoder sequence, for the processors."""
        parts = [
            np.concatenate([np.repeat(self._first[s][None], self._k, axis=0), self._beams[s].tokens], axis=1)
            for s in self._active
        ]
        return np.concatenate(parts, axis=0)

    def _scores(self, logits: np.ndarray) -> np.ndarray:
        """float (N, V) logits → processed log-probabilities float64 (N, V)."""
        check_finite_logits(logits, self._step + 1, self.row_sources())
        return proc.apply(self._processors, log_softmax(logits), self._history(), self._step)

    def _candidates(self, beams: _Beams, scores: np.ndarray) -> tuple[np.ndarray, ...]:
        """The best continuations of one input, best first: parent beam, token, total score and
        the token's logprob, each (2K,), from scores float64 (K, V)."""
        vocab = scores.shape[1]
        candidates = (scores + beams.scores[:, None]).ravel()  # (K·V,)
        order = _top(candidates, min(self._keep, candidates.size))
        parent, token = order // vocab, order % vocab
        return parent, token, candidates[order], scores[parent, token]

    def _advance(self, beams: _Beams, scores: np.ndarray) -> np.ndarray:
        """One step of one input: scores float64 (K, V) → parent beam of each new beam (K,)."""
        k = self._k
        parent, token, value, token_logprob = self._candidates(beams, scores)
        seqs = np.concatenate([beams.tokens[parent], token[:, None]], axis=1)  # (2K, n)
        logprobs = np.concatenate([beams.logprobs[parent], token_logprob[:, None]], axis=1)
        reasons = [self._ending(seq) for seq in seqs]
        if not (self._early is True and len(beams.finished) == k):
            new = [self._finish(seqs[c], logprobs[c], value[c], reasons[c]) for c in range(k) if reasons[c]]
            beams.finished = sorted(beams.finished + new, key=lambda h: -h.score)[:k]
        ended = np.array([why is not None for why in reasons])
        adjusted = value + _NEG * ended  # ended candidates only run when nothing else can
        chosen = np.argsort(-adjusted, kind="stable")[:k]
        beams.tokens, beams.logprobs, beams.scores = seqs[chosen], logprobs[chosen], adjusted[chosen]
        beams.done = self._step >= self._max_new or self._is_done(beams)
        return parent[chosen]

    def _ending(self, seq: np.ndarray) -> str | None:
        if int(seq[-1]) in self._eos:
            return "eos"
        if self._stops is not None and self._stops.hit(seq.tolist()):
            return "stop"
        return "length" if len(seq) >= self._max_new else None

    def _finish(self, seq: np.ndarray, logprobs: np.ndarray, total: float, reason: str) -> Hypothesis:
        score = float(total) / len(seq) ** self._penalty
        keep = len(seq) - 1 if reason == "eos" else len(seq)  # ids never include the EOS
        return Hypothesis(seq[:keep].tolist(), logprobs[:keep].tolist(), score, reason)

    def _is_done(self, beams: _Beams) -> bool:
        if len(beams.finished) < self._k:
            return False
        if self._early is True:
            return True
        length = self._max_new if self._early == "never" and self._penalty > 0 else self._step
        best_running = beams.scores[0] / length**self._penalty
        return not best_running > beams.finished[-1].score


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (lower index first on ties)."""
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.lexsort((part, -values[part]))]
