"""GenerationConfig: one frozen, validated set of decoding options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from seqport.engine.errors import ConfigError


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options, validated at construction.

    Args:
        max_new_tokens: most tokens generated per input (EOS included).
        eos_token_ids: ids that end a sequence; empty = the manifest's.
        truncate: cut inputs longer than the model's max positions instead of raising.
        batch_size: split large input lists into batches of this many inputs; 0 = one batch.
    """

    max_new_tokens: int = 64
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    truncate: bool = False
    batch_size: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            problems.append(f"batch_size must be an integer >= 0, got {self.batch_size!r}")
        if any(not isinstance(i, int) or i < 0 for i in self.eos_token_ids):
            problems.append(f"eos_token_ids must be non-negative integers, got {self.eos_token_ids!r}")
        if problems:
            raise ConfigError("invalid GenerationConfig: " + "; ".join(problems))

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with `overrides` applied; an unknown option raises TypeError naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"unknown generation option(s) {unknown}; known options are: {', '.join(sorted(known))}"
            )
        if "eos_token_ids" in overrides and overrides["eos_token_ids"] is not None:
            overrides["eos_token_ids"] = tuple(overrides["eos_token_ids"])
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_defaults(cls, defaults: dict[str, Any]) -> GenerationConfig:
        """Build from a manifest's `generation` section (lists become tuples)."""
        return cls().replace(**defaults)
