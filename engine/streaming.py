"""Streaming text: valid UTF-8 pieces as tokens arrive, whose concatenation is the final text.

tokenizers' `decoders.DecodeStream` emits text only once a token completes whole characters
(byte-level BPE splits one "é" or emoji over several tokens). On top of it, `TextStream` holds
back a tail that could still become a stop string, and at the end flushes whatever the full
decode has beyond what was sent, so the pieces always join to `decode(ids)` (cut before the
stop string when one ended the text).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from seqport.engine.stopping import cut_at_stop, held_back

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """One streamed token of one input.

    Args:
        index: position of the input in the list given to `stream()`.
        token_id: the generated id (the EOS id on an "eos" finish).
        text: new text to show now; may be "" (an incomplete character, a possible stop
            string, or a special token).
        logprob: log-probability of the token under the processed distribution.
        finish_reason: None until the input's last piece, then "eos", "stop" or "length".
    """

    index: int
    token_id: int
    text: str
    logprob: float
    finish_reason: str | None = None


class TextStream:
    """Incremental decoder of one generated sequence.

    Args:
        tokenizer: the `tokenizers.Tokenizer` whose decoder turns ids into text.
        stops: stop strings; text that may begin one is held back until it cannot.
    """

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()) -> None:
        self._tokenizer, self._stops = tokenizer, tuple(stops)
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._ids: list[int] = []
        self._pending = ""  # decoded but not yet sent
        self._sent = ""

    def step(self, token: int, finish_reason: str | None = None) -> str:
        """Add the next token; returns the text that can be shown now.

        Args:
            token: the generated id. On an "eos" finish it is not part of the text.
            finish_reason: set on the sequence's last token; the rest of the text is flushed.
        """
        if finish_reason != "eos":
            self._ids.append(token)
            self._pending += self._decoder.step(self._tokenizer, token) or ""
        if finish_reason is not None:
            return self._flush(finish_reason)
        keep = held_back(self._pending, self._stops) if self._stops else 0
        piece, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        self._sent += piece
        return piece

    def _flush(self, finish_reason: str) -> str:
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if finish_reason == "stop":
            text = cut_at_stop(text, self._stops)
        if not text.startswith(self._sent):  # a decoder whose text is not append-only
            logger.warning("streamed text %r is not a prefix of the final text %r", self._sent, text)
        piece = text[len(self._sent) :]
        self._sent, self._pending = text, ""
        return piece
