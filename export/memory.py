"""Letting go of PyTorch's copy of the weights once export no longer needs it.

An export holds the weights twice at its peak: PyTorch's (the model) and onnxruntime's (the
validation session). Validation runs PyTorch's side first, then releases the model, then loads
the graph in onnxruntime (export/validate.py validate_decoder_only). What the release can free
is limited: after torch.onnx export, tensors aliasing most parameters' storage stay referenced
from inside torch (on SmolLM2 about 0.1 of the 0.54 GB is freed; docs/real-models.md).
"""

from __future__ import annotations

import ctypes
import gc
import logging

import torch

logger = logging.getLogger(__name__)


def release_weights(adapter) -> None:
    """Free the PyTorch weights of the adapter's `model` (each parameter and buffer emptied:
    the model cannot run afterwards) and hand the freed pages back to the system where the C
    library can (glibc's malloc_trim). Only for a model nothing else uses: export_model's own.

    Not every byte goes: after torch.onnx export, tensors that alias some parameters' storage
    stay referenced from inside torch (not from Python objects this code can reach).
    """
    model = getattr(adapter, "model", None)
    if isinstance(model, torch.nn.Module):
        # torch.onnx keeps parts of the ONNX graph alive after export, and its initializers
        # hold the parameter objects themselves: empty each one in place, which all holders see
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                tensor.data = torch.empty(0, dtype=tensor.dtype)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        logger.debug("no glibc malloc_trim here: freed pages stay with the allocator")
