"""What generation returns: frozen dataclasses with plain Python fields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GeneratedSequence:
    """One generated hypothesis.

    Args:
        ids: generated token ids, without the decoder start/prompt and without the EOS token.
        token_logprobs: log-probability of each id in `ids` under the model.
        score: total log-probability of the sequence, EOS included when it was generated.
        finish_reason: "eos", "length" or "stop".
        text: the decoded text (None from the token-level API).
    """

    ids: list[int]
    token_logprobs: list[float]
    score: float
    finish_reason: str
    text: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    """All hypotheses kept for one input, best first; the properties read the best one."""

    sequences: list[GeneratedSequence]

    @property
    def ids(self) -> list[int]:
        return self.sequences[0].ids

    @property
    def text(self) -> str | None:
        return self.sequences[0].text

    @property
    def score(self) -> float:
        return self.sequences[0].score

    @property
    def token_logprobs(self) -> list[float]:
        return self.sequences[0].token_logprobs

    @property
    def finish_reason(self) -> str:
        return self.sequences[0].finish_reason
