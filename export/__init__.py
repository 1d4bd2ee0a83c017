"""PyTorch side of seqport: reference models, adapters, ONNX export and validation."""
