"""Stochastic-rounding quantization with per-block absmax scales (8 or 4 bits).

Values are cut into blocks of ``B`` consecutive entries. A block ``x_1..x_B`` gets the scale
``s = max_j |x_j|`` and the step ``Δ = s / L`` with ``L = 2**(bits-1) - 1`` levels per sign
(127 for 8 bits, 7 for 4 bits). Each value becomes the signed integer code

    q_j = floor(x_j / Δ + u_j),    u_j ~ U[0, 1) independently,

clipped to ``[-L, L]``, and is decoded as ``q_j · Δ``. Stochastic rounding is unbiased,
``E[q_j · Δ] = x_j``, and every error is below one step, ``|q_j · Δ − x_j| < Δ`` (QSGD, Alistarh
et al. 2017, arXiv:1610.02132; per-block absmax scales as in Dettmers et al. 2022,
arXiv:2110.02861). Codes ``-2**(bits-1)`` (-128, -8) are never produced.
"""

from __future__ import annotations

import numpy as np


def levels(bits: int) -> int:
    """``L = 2**(bits-1) - 1``: the largest code magnitude of a ``bits``-bit quantizer.

    Raises:
        ValueError: if ``bits`` is not 8 or 4.
    """
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4 for quantization, got {bits}")
    return (1 << (bits - 1)) - 1


def _blocks(values: np.ndarray, block_size: int) -> np.ndarray:
    """``values`` zero-padded to whole blocks, shaped ``(num_blocks, block_size)``.

    A view when ``values`` already fills whole blocks, else a padded copy.
    """
    num_blocks = -(-values.size // block_size)
    if values.size == num_blocks * block_size:
        return values.astype(np.float32, copy=False).reshape(num_blocks, block_size)
    padded = np.zeros(num_blocks * block_size, dtype=np.float32)
    padded[: values.size] = values
    return padded.reshape(num_blocks, block_size)


def quantize(values: np.ndarray, bits: int, block_size: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and per-block scales of ``values``.

    Args:
        values: 1-D float32 array of finite values.
        bits: 8 or 4.
        block_size: values per scale (the last block may be shorter).
        rng: source of the rounding noise ``u``.

    Returns:
        ``(codes, scales)``: ``int8`` codes in ``[-L, L]``, one per value, and ``float32``
        scales ``s ≥ 0``, one per block.

    Raises:
        ValueError: if ``values`` is not 1-D, ``block_size < 1`` or ``bits`` is not 8 or 4.
    """
    top = levels(bits)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if values.size == 0:
        return np.empty(0, dtype=np.int8), np.empty(0, dtype=np.float32)
    blocks = _blocks(values, block_size)
    scales = np.maximum(blocks.max(axis=1), -blocks.min(axis=1))
    steps = scales / np.float32(top)
    inverse = np.divide(np.float32(1.0), steps, out=np.zeros_like(steps), where=steps > 0)
    scaled = blocks * inverse[:, None]
    scaled += rng.random(scaled.shape, dtype=np.float32)
    np.floor(scaled, out=scaled)
    np.clip(scaled, -top, top, out=scaled)
    return scaled.astype(np.int8).ravel()[: values.size], scales


def dequantize(codes: np.ndarray, scales: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """``q_j · s_b / L`` for every code ``q_j`` of block ``b``: the decoded float32 values.

    Raises:
        ValueError: if the number of scales is not ``ceil(len(codes) / block_size)``.
    """
    top = levels(bits)
    num_blocks = -(-codes.size // block_size)
    if scales.size != num_blocks:
        raise ValueError(f"expected {num_blocks} scales for {codes.size} codes in blocks of "
                         f"{block_size}, got {scales.size}")
    steps = scales.astype(np.float32) / np.float32(top)
    decoded = _blocks(codes, block_size) * steps[:, None]
    return decoded.ravel()[: codes.size]
