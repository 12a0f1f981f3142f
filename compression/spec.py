"""How one hop compresses an update: top-k ratio, bits per value, quantization block size."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from fedmosaic.config import COMPRESSION_BITS

"""``32``: float32 values; ``8`` and ``4``: signed integer codes with per-block scales."""

MAX_BLOCK_SIZE = 1 << 20
"""Largest allowed quantization block (values per scale)."""


def _is_integer(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class CompressionSpec:
    """Compression of one hop (device→edge or edge→cloud).

    Attributes:
        topk_ratio: share of each floating-point tensor's entries that is sent, in (0, 1];
            tensor of ``n`` entries keeps ``k = ceil(topk_ratio · n)`` of them (at least 1),
            those of largest magnitude. ``1.0`` sends every entry (dense).
        bits: ``32`` sends the kept values as float32; ``8`` or ``4`` quantize them with
            stochastic rounding to signed integer codes in ``[-L, L]``, ``L = 2**(bits-1) - 1``
            (127 or 7), one absmax scale per block.
        block_size: kept values per quantization scale, in [1, 2**20]; ignored for 32 bits.

    Raises:
        ValueError: naming the field and its allowed values if one is out of range.
    """

    topk_ratio: float = 1.0
    bits: int = 32
    block_size: int = 256

    def __post_init__(self) -> None:
        ratio = self.topk_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"topk_ratio must be a number in (0, 1], got {ratio!r}")
        if not _is_integer(self.bits) or self.bits not in COMPRESSION_BITS:
            raise ValueError(f"bits must be one of {COMPRESSION_BITS}, got {self.bits!r}")
        size = self.block_size
        if not _is_integer(size) or not 1 <= size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be an integer in [1, {MAX_BLOCK_SIZE}], "
                             f"got {size!r}")

    @property
    def lossless(self) -> bool:
        """Whether the hop sends every float32 value unchanged (``topk_ratio=1``, 32 bits)."""
        return self.topk_ratio == 1.0 and self.bits == 32
