"""Backends behind the engine's `Runtime` interface: onnxruntime first, PyTorch as reference."""
