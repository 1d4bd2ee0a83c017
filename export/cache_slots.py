"""Where a decoder step's new tokens sit in the self-attention cache, for both cache kinds.

A *growing* cache (the default) takes past K/V of (B, H_kv, P, D) and returns P+T slots: the
new K/V are concatenated, so every step copies the whole past once more. A *preallocated*
cache takes a buffer of (B, H_kv, C, D) sized for the whole request plus `cache_position`
(T,), the slots of the new tokens; the new K/V are scattered into those slots and the step
returns the buffer. With the output bound to the input buffer (IOBinding) onnxruntime's
ScatterElements writes in place, so a step moves only T slots of K/V. Slots after the last
written one hold zeros (or stale values) and are masked, which is why the engine zero-fills
new buffers: a masked NaN would still poison softmax.

Adapters build one `StepSlots` per step and use it for three things: positions of the new
tokens, writing the cache, and the causal mask over the cache's slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqport.export.adapter import KV


@dataclass(frozen=True)
class StepSlots:
    """One decoder step's geometry.

    Attributes:
        positions: int64 (T,) cache slot (= target position) of each new token.
        key_count: slots the step attends over: P+T (growing) or C (preallocated).
        cache_position: the graph input of a preallocated cache, None for a growing one.
    """

    positions: torch.Tensor
    key_count: int | torch.SymInt
    cache_position: torch.Tensor | None

    def extend(self, past: KV, new: KV) -> KV:
        """Past K/V plus this step's (B, H_kv, T, D): concatenated, or written into the buffer."""
        if self.cache_position is None:
            return torch.cat([past[0], new[0]], dim=2), torch.cat([past[1], new[1]], dim=2)  # (B, H, P+T, D)
        index = self.cache_position.view(1, 1, -1, 1).expand(new[0].shape)  # (B, H_kv, T, D)
        return past[0].scatter(2, index, new[0]), past[1].scatter(2, index, new[1])  # (B, H, C, D)

    def allowed(self) -> torch.Tensor:
        """bool (T, key_count): query t may see slot j when j <= its own slot."""
        keys = torch.arange(self.key_count, device=self.positions.device)
        return keys[None, :] <= self.positions[:, None]

    def causal_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive (T, key_count): 0 where allowed, the dtype's lowest value elsewhere."""
        zero = torch.zeros((), dtype=dtype, device=self.positions.device)
        return torch.where(self.allowed(), zero, torch.finfo(dtype).min)


def step_slots(past: KV, new_len: int, cache_position: torch.Tensor | None = None) -> StepSlots:
    """The slots of `new_len` tokens after `past` (growing), or at `cache_position` (preallocated)."""
    held = past[0].shape[2]
    if cache_position is None:
        return StepSlots(torch.arange(new_len, device=past[0].device) + held, held + new_len, None)
    return StepSlots(cache_position, held, cache_position)


def preallocate(past: list[KV], capacity: int) -> list[KV]:
    """Growing-cache past (B, H_kv, P, D) per layer → zero-filled buffers (B, H_kv, capacity, D)
    holding it in slots 0..P-1 (for export examples)."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, 0, capacity - t.shape[2]))

    return [(pad(k), pad(v)) for k, v in past]
