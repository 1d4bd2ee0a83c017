"""Reference PyTorch models that seqport exports and validates against."""

from seqport.export.models.transformer import Transformer, TransformerConfig

__all__ = ["Transformer", "TransformerConfig"]
