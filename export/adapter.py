"""The adapter interface: what a PyTorch model must offer to be exported by seqport.

The reference Transformer, every HuggingFace family and a user's own module export through
the same four methods, so they all get the same component contract and the same validation.
See docs/own-model.md for a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from seqport.engine.manifest import StateSpec

KV = tuple[torch.Tensor, torch.Tensor]  # key, value: (B, H_kv, S, D)


@dataclass(frozen=True)
class ModelSpec:
    """Canonical facts about a model, normalised once from its own config.

    Args:
        family: short name recorded in the manifest ("seqport-transformer", "t5", ...).
        vocab_size: size of the logits' last axis.
        max_positions: longest source or target the model supports.
        num_layers: decoder layers (each has one self-attention cache and one cross K/V).
        num_heads: query heads; num_kv_heads: key/value heads (fewer with grouped-query attention).
        head_dim: size of one head.
        eos: end-of-sequence ids; pad, bos, decoder_start, unk: special ids or None.
        generation: defaults for GenerationConfig fields (e.g. {"max_new_tokens": 64}).
        states: the decoder's own state by name, in the order decode_step's per-layer tuples
            hold it (e.g. {"cell": StateSpec(["batch", 24])} for a recurrent cell of width 24);
            empty: the self-attention (key, value) of (B, H_kv, P, D). See export/decoder_state.py.
    """

    family: str
    vocab_size: int
    max_positions: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eos: list[int]
    pad: int | None = None
    bos: int | None = None
    decoder_start: int | None = None
    unk: int | None = None
    architecture: str = "encoder-decoder"
    generation: dict[str, Any] = field(default_factory=dict)
    states: dict[str, StateSpec] = field(default_factory=dict)


class EncoderDecoderAdapter(Protocol):
    """An encoder-decoder model split the way the engine runs it.

    Shapes: B batch, S source, T new target tokens, P past target tokens, H_kv key/value heads,
    D head size, d model width, V vocabulary.

    Optional: an adapter whose decode_step also accepts keywords position_ids (B, T) and
    attention_mask (B, P+T) (each row's positions; 0 masks a padding slot of its past) sets
    `row_positions = True`; the export then adds them to the decoder, which lets the server
    batch rows at different steps together (docs/serving.md).
    """

    def spec(self) -> ModelSpec:
        """The model's canonical geometry and special ids."""
        ...

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[KV]]:
        """int64 (B, S) ids and mask → hidden (B, S, d) and cross K/V (B, H_kv, S, D) per layer."""
        ...

    def decode_step(
        self,
        input_ids: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        cross: list[KV],
        past: list[KV],
    ) -> tuple[torch.Tensor, list[KV]]:
        """New ids (B, T) after P past tokens → hidden (B, T, d) and present K/V (B, H_kv, P+T, D).

        Past length 0 must work: it is the first step. With ModelSpec.states, `past` and the
        result hold per layer one tensor per declared state (its shape rule). A decode_step
        that also takes `position_ids` gets int64 (B, T), each new token's position (P + t).
        """
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output projection: (B, K, d) → float32 (B, K, V)."""
        ...

    def empty_past(self, batch: int) -> list[KV]:
        """Zero-length past K/V (B, H_kv, 0, D) for every layer, or with ModelSpec.states the
        declared initial state (zeros of each rule with steps = 0), which the engine starts from."""
        ...


def tied_projection(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden (B, K, d) @ weight(V, d)^T → (B, K, V) as one Gemm(transB=1) on the stored weight.

    F.linear on 2-D rows exports as Gemm reading `weight` as it is stored (V, d): no transposed
    copy in the file, the same initializer as the token Gather, and onnxruntime prepacks it for
    MLAS. The two other spellings are worse: `hidden @ weight.t()` folds the transpose into a
    second initializer, and (weight @ rows^T)^T runs the vocabulary projection as an unpacked
    (V, d) x (d, N) product, 2.3x slower at batch 1 on the t5-small shape (4.3 vs 1.8 ms,
    2 threads; benchmarks/results/compare.md).
    """
    b, k, d = hidden.shape
    return torch.nn.functional.linear(hidden.reshape(b * k, d), weight).reshape(b, k, weight.shape[0])  # (B, K, V)
