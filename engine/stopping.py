"""Stop strings: matched on the decoded text, so a stop string may span token boundaries."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StopStrings:
    """Says when a row's decoded text contains one of the stop strings, and cuts text there.

    Args:
        decode: generated ids → text (the tokenizer's decode, special tokens skipped).
        stops: the stop strings (non-empty).
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self._decode, self.stops = decode, tuple(stops)

    def hit(self, ids: Sequence[int]) -> bool:
        """True when the text of `ids` contains a stop string."""
        text = self._decode(list(ids))
        return any(stop in text for stop in self.stops)

    def cut(self, text: str) -> str:
        """`text` up to (without) the earliest stop string in it; unchanged when none occurs."""
        return cut_at_stop(text, self.stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (without) the earliest occurrence of any of `stops`."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return text[: min(found)] if found else text


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string
    (a proper prefix of one); streaming keeps it back until the next token decides."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
