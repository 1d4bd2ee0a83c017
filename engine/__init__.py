"""Torch-free inference engine for seqport artifacts."""
