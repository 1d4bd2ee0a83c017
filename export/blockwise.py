"""Blockwise low-bit weight quantization in numpy, laid out for onnxruntime's MatMulNBits.

A MatMul weight W (K, N) is cut into blocks of `block_size` values along K; each block of each
output column n gets a scale s and stores codes q in 0..2^bits-1, and MatMulNBits computes with
w = s * (q - z), z the block's zero point (2^(bits-1) when the graph gives none). Three schemes:

- "symmetric": no zero points; s from the block's largest magnitude.
- "asymmetric": min/max over the block with a uint zero point (z rounded to an integer).
- "offset": min/max with the exact offset: w = s * (q - 2^(bits-1)) + o, o a float per block
  (the block minimum plus 2^(bits-1) s). MatMulNBits has no float offset on its fast kernels
  (float zero points make onnxruntime's CPU kernel dequantize every call, ~40x slower), so
  export/matmul_nbits.py adds o as block sums of the activations times a small (K/bs, N) matrix.

Each scheme first tries to recover a grid the block's values already lie on: min/max (or the
largest magnitude) over the levels a block actually uses gives the step of any uniform grid
whose two end levels occur, and smaller level counts are tried where that is not exact. Weights
that went through a blockwise quantizer before (a GGUF's Q4_0/Q4_1/Q8_0 dequantized to float,
an earlier int4 export) are then reproduced up to float rounding instead of being rounded a
second time; other weights get plain round-to-nearest on the min/max (or magnitude) grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SCHEMES = ("symmetric", "asymmetric", "offset")
#: a block is on a grid when every value is within this fraction of the block's span of it
GRID_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A weight (K, N) quantized blockwise along K.

    Attributes:
        codes: uint8 (N, nb, block_size), values 0..2^bits-1 (rows past K are 0).
        scales: float32 (N, nb).
        zero_points: uint8 (N, nb), or None for the default 2^(bits-1).
        offsets: float32 (N, nb) added to every value of the block, or None.
        bits: 4 or 8.
        k: the weight's rows K.
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    offsets: np.ndarray | None
    bits: int
    k: int

    def dequantize(self) -> np.ndarray:
        """The weight these blocks stand for: float32 (K, N)."""
        zero = self.zero_points if self.zero_points is not None else np.full_like(self.scales, 1 << (self.bits - 1))
        values = (self.codes.astype(np.float32) - zero[..., None]) * self.scales[..., None]  # (N, nb, bs)
        if self.offsets is not None:
            values += self.offsets[..., None]
        n = values.shape[0]
        return np.ascontiguousarray(values.reshape(n, -1)[:, : self.k].T)


def quantize(weight: np.ndarray, bits: int, block_size: int, scheme: str) -> Blocks:
    """Quantize a weight (K, N) blockwise along K.

    Args:
        weight: float32 (K, N), a MatMul's second input.
        bits: 4 or 8.
        block_size: values per block along K.
        scheme: one of SCHEMES.

    Returns:
        The blocks; `Blocks.dequantize()` gives the weight as the graph will compute with it.
    """
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    x = np.ascontiguousarray(padded.T).reshape(n, blocks, block_size)  # (N, nb, bs)
    if scheme == "symmetric":
        return _symmetric(x, bits, k)
    return _min_max(x, bits, k, exact_offset=scheme == "offset")


def _min_max(x: np.ndarray, bits: int, k: int, exact_offset: bool) -> Blocks:
    """Asymmetric blocks: step (max - min) / levels, levels 2^bits - 1 unless fewer fit exactly."""
    low, high = x.min(axis=-1), x.max(axis=-1)  # (N, nb)
    span = high - low
    candidates = range((1 << bits) - 1, 0, -1) if bits <= 4 else [(1 << bits) - 1]
    levels = _levels(x - low[..., None], span, candidates)
    scale = np.where(span > 0, span / levels, 1.0).astype(np.float32)
    codes = np.clip(np.rint((x - low[..., None]) / scale[..., None]), 0, (1 << bits) - 1)
    if exact_offset:  # w = s (q - mid) + o with o = low + mid s: the grid exactly, kernel's default zero point
        mid = 1 << (bits - 1)
        offsets = (low + mid * scale).astype(np.float32)
        return Blocks(codes.astype(np.uint8), scale, None, offsets, bits, k)
    # an integer zero point moves the grid so that 0 is on it; the block minimum is then approximate
    zero = np.clip(np.rint(-low / scale), 0, (1 << bits) - 1)
    codes = np.clip(np.rint(x / scale[..., None]) + zero[..., None], 0, (1 << bits) - 1)
    return Blocks(codes.astype(np.uint8), scale, zero.astype(np.uint8), None, bits, k)


def _symmetric(x: np.ndarray, bits: int, k: int) -> Blocks:
    """Blocks w = s (q - 2^(bits-1)): the largest-magnitude value maps to -2^(bits-1) (the full
    range, as onnxruntime and llama.cpp's Q4_0 do) or, where that is not exact but one level
    fewer is (llama.cpp's Q8_0: s = max|w| / 127), to -(2^(bits-1) - 1)."""
    mid = 1 << (bits - 1)
    index = np.abs(x).argmax(axis=-1)[..., None]
    signed = np.take_along_axis(x, index, axis=-1)[..., 0]  # (N, nb): the value of largest magnitude
    levels = _levels(x, -signed, [mid, mid - 1])
    scale = np.where(signed != 0, -signed / levels, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / scale[..., None]) + mid, 0, (1 << bits) - 1)
    # the same default zero point, written out at 8 bits: onnxruntime's 8-bit kernels run faster
    # with a zero_points input than without (measured on AVX-512, onnxruntime 1.32)
    zero = np.full(scale.shape, mid, dtype=np.uint8) if bits == 8 else None
    return Blocks(codes.astype(np.uint8), scale, zero, None, bits, k)


def _levels(x: np.ndarray, unit: np.ndarray, candidates) -> np.ndarray:
    """Per block, the first level count L in `candidates` whose step unit / L puts every value of
    the block on the grid (within GRID_TOLERANCE of |unit|); the first candidate where none does.
    x: float32 (N, nb, bs) measured from the grid's origin; unit: float32 (N, nb), signed."""
    chosen = np.full(unit.shape, candidates[0], dtype=np.float32)
    pending = unit != 0
    for levels in candidates:
        if not pending.any():
            break
        step = unit[pending] / levels  # (P,)
        ratio = x[pending] / step[:, None]  # (P, bs)
        error = np.abs(ratio - np.rint(ratio)).max(axis=-1) * np.abs(step)
        hit = np.zeros_like(pending)
        hit[pending] = error <= GRID_TOLERANCE * np.abs(unit[pending])
        chosen[hit] = levels
        pending &= ~hit
    return chosen


def packed(blocks: Blocks) -> tuple[np.ndarray, np.ndarray | None]:
    """MatMulNBits' B and zero_points inputs: uint8 (N, nb, bs * bits / 8) with two 4-bit codes
    per byte, low nibble first; zero points uint8 (N * ceil(nb * bits / 8)), likewise packed."""
    codes = blocks.codes
    if blocks.bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    zero = blocks.zero_points
    if zero is not None and blocks.bits == 4:
        if zero.shape[1] % 2:
            zero = np.pad(zero, ((0, 0), (0, 1)))
        zero = zero[:, 0::2] | (zero[:, 1::2] << 4)
    return np.ascontiguousarray(codes, dtype=np.uint8), None if zero is None else zero.reshape(-1).astype(np.uint8)
