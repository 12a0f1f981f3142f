"""Vectorised bit packing: LEB128 varints for index gaps, two 4-bit codes per byte.

A varint stores an unsigned integer in 7-bit groups, least significant first, with the high
bit of each byte set on every byte but the last (LEB128, as in Protocol Buffers). Sorted
positions ``p_1 < p_2 < ...`` are sent as the gaps ``p_1, p_2 − p_1, ...``: a gap below 128 is
one byte, below 16,384 two. 4-bit codes ``q`` in [-7, 7] are stored as the nibble ``q + 8``
(1..15), the first code of each pair in the low nibble.
"""

from __future__ import annotations

import numpy as np

from fedmosaic.compression.exceptions import WireFormatError

MAX_VARINT_BYTES = 5
"""Varints here hold values below ``2**35`` (positions are below ``2**32``)."""


def encode_varints(values: np.ndarray) -> bytes:
    """The LEB128 bytes of non-negative integers below ``2**35``.

    Raises:
        ValueError: if a value is negative or too large.
    """
    numbers = np.asarray(values, dtype=np.int64)
    if numbers.size == 0:
        return b""
    if numbers.min() < 0 or numbers.max() >= 1 << (7 * MAX_VARINT_BYTES):
        raise ValueError(f"varint values must be in [0, 2**{7 * MAX_VARINT_BYTES}), got range "
                         f"[{numbers.min()}, {numbers.max()}]")
    lengths = np.ones(numbers.size, dtype=np.int64)
    for group in range(1, MAX_VARINT_BYTES):
        lengths += numbers >= 1 << (7 * group)
    width = int(lengths.max())
    shifts = 7 * np.arange(width, dtype=np.int64)
    groups = ((numbers[:, None] >> shifts) & 0x7F).astype(np.uint8)  # (count, width)
    position = np.arange(width)
    groups[position < lengths[:, None] - 1] |= 0x80
    return groups[position < lengths[:, None]].tobytes()


def decode_varints(data: bytes | memoryview, count: int) -> np.ndarray:
    """Exactly ``count`` LEB128 integers that fill ``data`` completely, as ``int64``.

    Raises:
        WireFormatError: if ``data`` holds more or fewer than ``count`` varints, ends inside
            one, or has a varint longer than 5 bytes.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        if count:
            raise WireFormatError(f"expected {count} varints, got 0 bytes")
        return np.empty(0, dtype=np.int64)
    if raw[-1] & 0x80:
        raise WireFormatError("varint bytes end inside a varint (last byte has the "
                              "continuation bit set)")
    ends = np.flatnonzero((raw & 0x80) == 0)
    if ends.size != count:
        raise WireFormatError(f"expected {count} varints, got {ends.size}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise WireFormatError(f"varint longer than {MAX_VARINT_BYTES} bytes "
                              f"({int(lengths.max())})")
    low = (raw & 0x7F).astype(np.int64)
    numbers = low[starts]
    for group in range(1, int(lengths.max())):
        has = lengths > group
        numbers[has] |= low[starts[has] + group] << (7 * group)
    return numbers


def pack_nibbles(codes: np.ndarray) -> bytes:
    """4-bit codes in [-7, 7], two per byte (low nibble first, a last odd code padded by 0).

    Raises:
        ValueError: if a code is outside [-7, 7].
    """
    if codes.size and (codes.min() < -7 or codes.max() > 7):
        raise ValueError(f"4-bit codes must be in [-7, 7], got range [{codes.min()}, "
                         f"{codes.max()}]")
    nibbles = np.zeros(codes.size + (codes.size & 1), dtype=np.uint8)
    nibbles[: codes.size] = codes.astype(np.int16) + 8
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def unpack_nibbles(data: bytes | memoryview, count: int) -> np.ndarray:
    """The ``count`` 4-bit codes packed in ``data`` (``ceil(count / 2)`` bytes), as ``int8``.

    Raises:
        WireFormatError: if the length is wrong, a nibble is 0 (code -8, never produced) or
            the padding nibble of an odd count is not 0.
    """
    packed = np.frombuffer(data, dtype=np.uint8)
    expected = (count + 1) // 2
    if packed.size != expected:
        raise WireFormatError(f"expected {expected} bytes of 4-bit codes for {count} values, "
                              f"got {packed.size}")
    nibbles = np.empty(2 * packed.size, dtype=np.uint8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    if count & 1 and nibbles[-1] != 0:
        raise WireFormatError(f"padding nibble after the last of {count} 4-bit codes must be 0, "
                              f"got {int(nibbles[-1])}")
    codes = nibbles[:count]
    if codes.size and codes.min() == 0:
        raise WireFormatError("4-bit code nibble 0 (code -8) is never produced; the payload is "
                              "corrupted")
    return codes.astype(np.int8) - np.int8(8)
