"""Adapter for the reference Transformer (export/models/transformer.py)."""

from __future__ import annotations

from pathlib import Path

from seqport.export.adapter import ModelSpec
from seqport.export.models.transformer import Attention, Transformer


class TransformerAdapter:
    """The reference model already has encode/decode_step/logits; this adds its spec.

    `row_positions`: its decode_step takes position_ids (B, T) and attention_mask (B, P+T), so
    the export adds them to the decoder (continuous batching of encoder-decoder rows).
    """

    row_positions = True

    def __init__(self, model: Transformer) -> None:
        self.model = model.eval()
        self.encode = model.encode
        self.decode_step = model.decode_step
        self.logits = model.logits
        self.empty_past = model.empty_past

    @property
    def attention(self) -> str:
        """"portable" or "fused" (export/attention_seq2seq.py): the mode of every attention module."""
        return next(m.mode for m in self.model.modules() if isinstance(m, Attention))

    @attention.setter
    def attention(self, mode: str) -> None:
        for module in self.model.modules():
            if isinstance(module, Attention):
                module.mode = mode

    def spec(self) -> ModelSpec:
        cfg = self.model.config
        return ModelSpec(
            family=cfg.model_type,
            vocab_size=cfg.vocab_size,
            max_positions=cfg.max_positions,
            num_layers=cfg.num_decoder_layers,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            eos=[cfg.eos_id],
            pad=cfg.pad_id,
            bos=cfg.bos_id,
            decoder_start=cfg.bos_id,
            unk=cfg.unk_id,
            generation={"max_new_tokens": min(128, cfg.max_positions - 1)},
        )


def load(folder: Path) -> TransformerAdapter:
    return TransformerAdapter(Transformer.load(folder))
