"""Search strategies: choose the next tokens from a step's logits and say which rows go on.

Every strategy has the same shape (whisper's TokenDecoder): `row_sources()` says which input
each active row serves, `update(logits)` picks tokens and returns a `StepDecision` (None once
every row is finished), `finalize()` returns the results in input order. The loop in
decode_loop.py drives any of them. Greedy search and sampling live here (one token per row per
step); beam search is in beam.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from seqport.engine import processors as proc
from seqport.engine.device_array import Chosen
from seqport.engine.logit_checks import check_finite_logits, check_finite_logprobs, check_some_token_allowed
from seqport.engine.results import GeneratedSequence as Hypothesis
from seqport.engine.results import GenerationResult
from seqport.engine.sampling import greedy, sample
from seqport.engine.stopping import StopStrings

_INT64 = np.dtype(np.int64)
_INT64_Q = np.dtype("q")  # long long: what onnxruntime's int64 outputs carry (the same as _INT64 where long is 32-bit)
#: builds a NamedTuple from a tuple without its Python-level __new__ (one per decode step; a
#: frame costs several µs right after a decoder call, when the caches are cold)
_new_tuple = tuple.__new__

#: (processed scores float (N, V), row ids int64 (N,)) → chosen token ids int64 (N,)
Chooser = Callable[[np.ndarray, np.ndarray], np.ndarray]


class StepDecision(NamedTuple):
    """tokens: int64 (N',) next input per surviving row; rows: int64 (N',) the row each one
    continues (indices into the current rows: used to reorder/select the KV cache);
    same_rows: True when rows is 0..N-1 (every row goes on in place, so row_sources() is
    unchanged too), which spares the loop a comparison and a call every step. A NamedTuple,
    not a frozen dataclass: one is made every step."""

    tokens: np.ndarray
    rows: np.ndarray
    same_rows: bool = False


@dataclass(frozen=True)
class Emitted:
    """One token chosen for one input at the last step (what streaming reports).

    Args:
        source: index of the input in the batch.
        token: the chosen id.
        logprob: its log-probability under the processed distribution.
        finish_reason: None while the input goes on, else "eos", "stop" or "length".
    """

    source: int
    token: int
    logprob: float
    finish_reason: str | None


class Search(Protocol):
    def row_sources(self) -> np.ndarray: ...

    def update(self, logits: np.ndarray) -> StepDecision | None: ...

    def finalize(self) -> list[GenerationResult]: ...


def log_softmax_at(
    logits: np.ndarray, ids: np.ndarray, top: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """log softmax(logits)[row, ids[row]] for float (N, V) logits, without the full (N, V) array
    (one temporary, exponentiated in place: this runs on every row of every step).

    Args:
        top: each row's max (N,) when the caller knows it (greedy: the chosen logit), saving a pass.
        out: a scratch array of the logits' shape and dtype to use as that temporary (a search
            reuses one across steps: at (8, 49152) float32 a fresh one is 1.5 MB of new pages
            every step); ignored when it does not fit.
    """
    chosen = logits[np.arange(len(ids)), ids]  # (N,)
    top = logits.max(axis=-1) if top is None else top
    fits = out is not None and out.shape == logits.shape and out.dtype == logits.dtype
    shifted = np.subtract(logits, top[:, None], out=out if fits else None)  # (N, V)
    lse = np.log(np.exp(shifted, out=shifted).sum(axis=-1)) + top  # (N,)
    return chosen - lse


class TokenSearch:
    """Greedy search or sampling: one token per row and step, chosen from processed logits.

    With `samples` > 1 each input gets that many independent rows (num_return_sequences
    samples). A row leaves the active batch at EOS, at a stop string or at max_new_tokens.

    Args:
        first_tokens: int64 (B, T0) decoder start (+ prefix) or prompt of each input.
        eos: ids that end a row.
        max_new_tokens: most tokens per row.
        processors: applied to the float64 logits before `choose`.
        choose: greedy argmax or sampling (see Chooser).
        samples: rows per input.
        stops: stop strings, or None.
    """

    def __init__(
        self,
        first_tokens: np.ndarray,
        eos: Sequence[int],
        max_new_tokens: int,
        processors: list[proc.Processor],
        choose: Chooser,
        samples: int = 1,
        stops: StopStrings | None = None,
    ) -> None:
        rows = len(first_tokens) * samples
        self._eos, self._max_new, self._samples = frozenset(eos), max_new_tokens, samples
        self._processors, self._choose, self._stops = processors, choose, stops
        self._active = np.arange(rows)  # row id of each active row; input = row id // samples
        self._sources: np.ndarray | None = None  # row_sources(), made again when rows leave
        self._history = first_tokens[self._active // samples]  # (N, T0 + step)
        # per step (active row ids (N,), chosen ids (N,), logprobs (N,)): one append per step;
        # finalize() lays them out per row
        self._log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._texts = [[] for _ in range(rows)] if stops else None  # each row's ids, for stop strings
        self._finish: dict[int, str] = {}  # row id → "eos" / "stop" / "length" once it ended
        self._step, self._total = 0, rows
        self._rows = np.arange(rows, dtype=np.int64)  # 0..N-1, reused while every row goes on
        self._scratch: np.ndarray | None = None  # the (N, V) log-softmax temporary, reused
        self._last_reasons: list[str | None] | None = None  # the last update's finish reasons (None: all go on)
        self._min_new = _min_new_tokens(processors)  # EOS forbidden before this many tokens
        # min_new_tokens reads the step, not the ids: with it alone the history is never read
        self._history_read = not all(map(_is_min_new_tokens, processors))
        self._eos_ids = sorted(eos)  # the columns min_new_tokens masks

    @property
    def emitted(self) -> list[Emitted]:
        """What the last update chose, one per row that took part (streaming reads it); made on
        demand, so a plain generate() builds no per-row objects."""
        if not self._log:
            return []
        active, ids, logprobs = self._log[-1]
        reasons = self._last_reasons or [None] * len(active)
        samples = self._samples
        return [
            Emitted(r // samples, t, lp, why)
            for r, t, lp, why in zip(active.tolist(), ids.tolist(), logprobs.tolist(), reasons)
        ]

    def row_sources(self) -> np.ndarray:
        """int64 (N,) the input each active row serves; the same array object while no row
        leaves (callers compare by identity first)."""
        if self._sources is None:
            self._sources = self._active // self._samples
        return self._sources

    def update(self, logits: np.ndarray | Chosen) -> StepDecision | None:
        if type(logits) is Chosen:  # the decoder's greedy head chose: no numpy call over (N, V)
            next_ids, logprobs = logits[0], logits[1]
            if not math.isfinite(sum(logprobs.tolist())):  # a NaN or +inf logit, or a row all -inf
                check_finite_logprobs(logprobs, self._step + 1, self.row_sources())  # raises, naming the row
            if self._processors and self._step < self._min_new:  # min_new_tokens, the one processor the head allows
                next_ids, logprobs = self._chosen_without_eos(logits)
        else:
            next_ids, logprobs = self._select(logits)  # (N,), (N,)
        dtype = next_ids.dtype  # identity first: onnxruntime's int64 is 'q', equal to but not numpy's 'l'
        if dtype is not _INT64 and dtype is not _INT64_Q and dtype != _INT64:
            next_ids = next_ids.astype(np.int64)
        active = self._active
        self._step += 1
        self._log.append((active, next_ids, logprobs))
        tokens = next_ids.tolist()
        # the common step costs one set test over the chosen ids, no loop over the rows (and no call)
        goes_on = self._texts is None and self._step < self._max_new and self._eos.isdisjoint(tokens)
        reasons = self._last_reasons = None if goes_on else self._reasons(active, tokens)  # None: all go on
        if self._history_read:  # it only feeds processors that read it: else it stays the first tokens
            self._history = np.concatenate([self._history, next_ids[:, None]], axis=1)  # (N, T0 + step)
        if reasons is None:  # every row goes on: no gathers (self._rows is 0..N-1 of the active rows)
            return _new_tuple(StepDecision, (next_ids, self._rows, True))  # StepDecision(..., same_rows=True), in C
        rows = np.array([row for row, why in enumerate(reasons) if why is None], dtype=np.int64)
        self._active, self._sources = active[rows], None
        self._history, self._rows = self._history[rows], np.arange(len(rows), dtype=np.int64)
        return StepDecision(next_ids[rows], rows) if len(rows) else None

    def _reasons(self, active: np.ndarray, tokens: list[int]) -> list[str | None] | None:
        """Each row's finish reason at this step (None: it goes on), or None when every row goes
        on. `tokens`: the chosen ids as Python ints."""
        at_length = self._step >= self._max_new  # every active row has made `step` tokens
        reasons: list[str | None] = []
        for row, token in zip(active.tolist(), tokens):
            why = "eos" if token in self._eos else None
            if why is None and self._texts is not None:
                self._texts[row].append(token)
                why = "stop" if self._stops is not None and self._stops.hit(self._texts[row]) else None
            why = "length" if why is None and at_length else why
            if why is not None:
                self._finish[row] = why
            reasons.append(why)
        return None if reasons.count(None) == len(reasons) else reasons

    def _select(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float (N, V) logits → chosen ids int64 (N,) and their processed logprobs (N,)."""
        step, sources = self._step + 1, self.row_sources()
        if self._processors or self._choose is not greedy_chooser:
            check_finite_logits(logits, step, sources)
        if self._choose is greedy_chooser:  # argmax needs no float64 (N, V) copy; processors are pure
            return self._greedy(proc.apply(self._processors, logits, self._history, self._step), logits)
        scores = proc.apply(self._processors, logits.astype(np.float64), self._history, self._step)
        check_some_token_allowed(scores.max(axis=-1), step, sources)
        next_ids = self._choose(scores, self._active)  # (N,)
        return next_ids, log_softmax_at(scores, next_ids)

    def _chosen_without_eos(self, chosen: Chosen) -> tuple[np.ndarray, np.ndarray]:
        """The head's choice while min_new_tokens forbids EOS, with the log-probability
        renormalised over the allowed tokens:
        log p' = log p - log(1 - sum over EOS e of exp(logit_e - logsumexp)).
        A row whose argmax is an EOS id takes the best other id of its logits row instead (one
        argmax over a copy of that row: on a forced-length run every step after the model's own
        end is such a step, and the processor path over (N, V) cost 3x more)."""
        logits, ids = chosen.logits, chosen.ids.tolist()
        assert logits is not None, "a step whose head serves min_new_tokens passes the logits"
        # on Python floats, a few per row: after a decoder call each numpy call costs 10-25 us
        renormalised, eos_ids, changed = [], self._eos_ids, False
        for row, (token, logprob) in enumerate(zip(ids, chosen.logprobs.tolist())):
            lse = logits.item(row, token) - logprob  # the row's logsumexp
            eos_mass = sum(math.exp(logits.item(row, eos) - lse) for eos in eos_ids)
            if token in self._eos:
                allowed = logits[row].copy()  # (V,)
                allowed[eos_ids] = -np.inf
                token = ids[row] = int(allowed.argmax())  # the first on ties, as the processor path
                logprob, changed = logits.item(row, token) - lse, True
            renormalised.append(logprob - math.log1p(-eos_mass) if eos_mass < 1.0 else -math.inf)
            if not math.isfinite(renormalised[-1]):  # nothing but EOS is allowed: the processor path names the row
                return self._select(logits)
        next_ids = np.array(ids, dtype=np.int64) if changed else chosen.ids
        return next_ids, np.array(renormalised)  # (N,) float64

    def _greedy(self, scores: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Argmax of float (N, V) scores and its log-softmax, -log Σ exp(scores - max) per row
        (the chosen score is the max, read at the argmax rather than by a second pass over (N, V)).
        Few numpy calls on purpose: between two decoder calls the CPU caches are cold and each
        call costs far more than its arithmetic (docs/benchmarks.md)."""
        next_ids = scores.argmax(axis=-1)  # (N,) intp: int64 on 64-bit platforms
        if next_ids.dtype is not _INT64:
            next_ids = next_ids.astype(np.int64)
        if self._scratch is None or self._scratch.shape != scores.shape or self._scratch.dtype != scores.dtype:
            self._scratch = np.empty_like(scores)  # (N, V), reused while the rows stay
        if len(self._rows) != len(next_ids):
            self._rows = np.arange(len(next_ids), dtype=np.int64)
        top = scores[self._rows, next_ids][:, None]  # (N, 1) the row's max (NaN where it holds one, as argmax)
        if not math.isfinite(top.sum()):  # one check for every row: NaN, +inf, or a row all -inf
            if self._processors:
                check_some_token_allowed(top[:, 0], self._step + 1, self.row_sources())
            check_finite_logits(logits, self._step + 1, self.row_sources())  # raises, naming the row
        shifted = np.subtract(scores, top, out=self._scratch)  # (N, V)
        return next_ids, -np.log(np.exp(shifted, out=shifted).sum(axis=-1), dtype=np.float64)  # (N,)

    def finalize(self) -> list[GenerationResult]:
        """Per input its rows' sequences, highest score first (ties keep sample order)."""
        ids, logprobs = self._per_row()
        hypotheses = [self._hypothesis(row, ids[row], logprobs[row]) for row in range(len(ids))]
        results = []
        for start in range(0, len(hypotheses), self._samples):
            group = hypotheses[start : start + self._samples]
            results.append(GenerationResult(sorted(group, key=lambda h: -h.score)))
        return results

    def _per_row(self) -> tuple[list[list[int]], list[list[float]]]:
        """Each row's ids and logprobs, laid out from the step log (a row's steps are a prefix)."""
        rows, steps = self._total, len(self._log)
        tokens, scores = np.zeros((rows, steps), dtype=np.int64), np.zeros((rows, steps))  # (R, S)
        lengths = np.zeros(rows, dtype=np.int64)  # (R,)
        for step, (active, ids, logprobs) in enumerate(self._log):
            tokens[active, step], scores[active, step], lengths[active] = ids, logprobs, step + 1
        ends = lengths.tolist()
        return (
            [row[:end] for row, end in zip(tokens.tolist(), ends)],
            [row[:end] for row, end in zip(scores.tolist(), ends)],
        )

    def _hypothesis(self, row: int, ids: list[int], logprobs: list[float]) -> Hypothesis:
        finish = self._finish.get(row, "length")
        content = ids[:-1] if finish == "eos" else ids
        return Hypothesis(content, logprobs[: len(content)], float(sum(logprobs)), finish)


def _min_new_tokens(processors: list[proc.Processor]) -> int:
    """The `minimum` of a min_new_tokens processor in the list, else 0."""
    for processor in processors:
        if _is_min_new_tokens(processor):
            return int(processor.keywords["minimum"])  # type: ignore[attr-defined]
    return 0


def _is_min_new_tokens(processor: proc.Processor) -> bool:
    return getattr(processor, "func", None) is proc.min_new_tokens


def greedy_chooser(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Chooser for greedy search: argmax (the first on ties)."""
    return greedy(scores)


class Sampler:
    """Chooser for sampling: one generator per row, seeded from the input's global index.

    Sample j of input i draws from np.random.default_rng([seed + i, j]) (fresh entropy when
    seed is None), so results do not depend on how inputs are batched or split.

    Args:
        seed: the config's seed, or None.
        indices: global index (position in the caller's input list) of each batch input.
        samples: rows per input.
    """

    def __init__(self, seed: int | None, indices: Sequence[int], samples: int) -> None:
        self._rngs = [
            np.random.default_rng(None if seed is None else [seed + index, j])
            for index in indices
            for j in range(samples)
        ]

    def __call__(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return sample(scores, [self._rngs[row] for row in rows])
