"""The requests of a continuously batched decoder, one row each, and how a step's logits advance them.

A row chooses its tokens as `model.generate([prompt])` would. Most rows are plain greedy
(no sampling, no logits processor): their next token is the argmax of their raw logits, so one
argmax over all of them serves a whole step, and only the bookkeeping (EOS, stop strings,
max_tokens, the text piece) stays per row. A row with processors or sampling keeps its own
engine search (engine.decode_loop.make_search over a batch of one: a seeded row samples from
the generator input 0 of that call would use) and is updated on its own logits row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.decode_loop import make_search
from seqport.engine.errors import SeqportError
from seqport.engine.logit_checks import check_finite_logits
from seqport.engine.processors import build_processors
from seqport.engine.search import Search
from seqport.engine.stopping import StopStrings
from seqport.engine.streaming import StepResult, TextStream
from seqport.serving.batching import token_event
from seqport.serving.jobs import Job


@dataclass(eq=False)
class Row:
    """One request's row: its job, text stream and token choice.

    Args:
        job: where its events go.
        text: its incremental detokenizer.
        search: its own engine search, or None for a plain greedy row (batched argmax).
        eos: ids that end it.
        max_new: most tokens it generates (the checked, capped option).
        stops: its stop strings, or None.
    """

    job: Job
    text: TextStream
    search: Search | None
    eos: frozenset[int]
    max_new: int
    stops: StopStrings | None = None
    ids: list[int] = field(default_factory=list)  # generated so far
    token: int = 0  # the next decoder input

    def record(self, token: int) -> str | None:
        """A plain greedy row takes `token`; its finish reason, as engine TokenSearch decides it."""
        self.ids.append(token)
        if token in self.eos:
            return "eos"
        if self.stops is not None and self.stops.hit(self.ids):
            return "stop"
        return "length" if len(self.ids) >= self.max_new else None

    def update(self, logits: np.ndarray) -> tuple[int, str | None]:
        """A row with its own search chooses from float (1, V) logits: (token, finish reason)."""
        assert self.search is not None
        decision = self.search.update(logits)
        emitted = self.search.emitted[0]  # type: ignore[attr-defined]
        self.ids.append(emitted.token)
        if decision is not None:
            self.token = int(decision.tokens[0])
        return emitted.token, emitted.finish_reason


def make_row(job: Job, config: GenerationConfig, first: list[int], eos: tuple[int, ...], tokenizer: Any) -> Row:
    """The row of a request whose decoder starts with `first` (checked options `config`;
    `tokenizer`: the model's TextTokenizer)."""
    stops = StopStrings(tokenizer.decode, config.stop) if config.stop else None
    plain = not config.do_sample and config.num_beams == 1 and not build_processors(config, eos)
    search = None if plain else make_search(config, np.array([first], dtype=np.int64), eos, None, stops)
    text = TextStream(tokenizer.backend, config.stop)
    return Row(job, text, search, frozenset(eos), config.max_new_tokens, stops)


def advance(rows: list[Row], logits: np.ndarray) -> None:
    """Choose every row's next token from float (N, V) logits (row i: rows[i]) and emit it.

    A row that ends emits its finish reason (its job is then done); a row whose logits are not
    finite, or whose search fails, fails its own request only.
    """
    greedy = _greedy_tokens(rows, logits)  # (N,) list, -1 where the row has its own search or failed
    for i, row in enumerate(rows):
        if not row.job.live:
            continue
        try:
            if row.search is None:
                token = greedy[i]
                if token < 0:  # not finite: the engine's own check raises its error
                    check_finite_logits(logits[i : i + 1], len(row.ids) + 1, np.zeros(1, dtype=np.int64))
                reason = row.record(token)
                row.token = token
            else:
                token, reason = row.update(logits[i : i + 1])
        except SeqportError as exc:
            row.job.fail(exc)
            continue
        step = StepResult(0, token, "", 0.0, reason)
        row.job.emit(token_event(step, len(row.ids), row.job.request.config.max_new_tokens, row.text))


def _greedy_tokens(rows: list[Row], logits: np.ndarray) -> list[int]:
    """One argmax over the plain greedy rows' logits; -1 for the other rows and non-finite ones."""
    plain = [i for i, row in enumerate(rows) if row.search is None]
    tokens = [-1] * len(rows)
    if not plain:
        return tokens
    scores = logits if len(plain) == len(rows) else logits[plain]  # (G, V)
    ids = scores.argmax(axis=-1)  # (G,) the first on ties, as engine greedy()
    finite = np.isfinite(scores[np.arange(len(ids)), ids])  # the max: NaN/+inf, or all -inf, fail
    for i, token, ok in zip(plain, ids.tolist(), finite.tolist()):
        tokens[i] = token if ok else -1
    return tokens
