"""The byte format of a compressed update, and its strict decoder.

Layout (all integers little-endian)::

    magic "FMZC" | version u8 | tensor count u32 | table length u32 | table | data
    | crc32 u32 of all bytes before

    table = zlib-deflated concatenation, one entry per tensor, of
            name length u16 | name (UTF-8) | dtype length u8 | dtype (NumPy ``dtype.str``)
            | ndim u8 | shape (u32 each) | mode u8 | index encoding u8
            | if sparse: kept count k u32 | index bytes u32 | if INT8/INT4: block size u32
    data  = per tensor, in table order: if sparse: the positions (gaps or bitmap)
            | if INT8/INT4: scales (float32, one per block)
            | values: RAW: the array's bytes; FLOAT32: float32 each;
                      INT8: int8 each; INT4: two 4-bit codes per byte

The table (names, shapes, counts: repetitive text) is deflated, the data (already dense
codes) is not. A sparse tensor sends its kept positions ``p_1 < ... < p_k`` in whichever of
two encodings is shorter (:class:`IndexEncoding`): varint gaps ``p_1, p_2 − p_1, ...``
(:mod:`~fedmosaic.compression.packing`), about one byte per kept entry when the
gaps are below 128, or a bitmap of ``⌈n/8⌉`` bytes (bit ``i`` of the little-endian bit
order set iff position ``i`` is kept, padding bits zero), which wins once more than about
one entry in eight is kept; then its values in that order. A dense tensor sends all ``n``
values in C order. Non-floating arrays (integer counters, masks) are sent RAW, dense and
exact. The decoder checks the magic and version, the checksum (``zlib.crc32``), every length,
that positions are strictly increasing and below ``n`` (a bitmap: exactly ``k`` bits set, no
padding bit set), that scales are finite and non-negative and codes in range; anything else
raises :class:`WireFormatError`.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from fedmosaic.compression.exceptions import WireFormatError
from fedmosaic.compression.packing import (
    decode_varints,
    encode_varints,
    pack_nibbles,
    unpack_nibbles,
)
from fedmosaic.compression.quantize import dequantize

MAGIC = b"FMZC"
VERSION = 2
"""2: the index encoding (varint gaps or bitmap); 1 had varint gaps only."""
MAX_ELEMENTS = 1 << 28
"""Largest tensor (entries) a payload may declare, so a tiny payload cannot claim gigabytes."""
MAX_NDIM = 32
MAX_TABLE_BYTES = 1 << 24
"""Largest inflated tensor table a payload may carry."""
MAX_DECODED_BYTES = 1 << 28
"""Default cap on the decoded arrays of one payload (256 MiB; the default model is 150 kB)."""
TABLE_COMPRESSION_LEVEL = 9
_DTYPE_PATTERN = re.compile(rb"[<|](b1|[iu][1248]|f[248])")
"""``dtype.str`` of the dtypes a payload may hold: bool, integers and floats, little-endian."""
_HEADER = struct.Struct("<4sBII")
_CRC = struct.Struct("<I")


class ValueMode(IntEnum):
    """How a tensor's values are stored."""

    RAW = 0
    """The array's own bytes (non-floating dtypes), exact."""
    FLOAT32 = 1
    """float32 values."""
    INT8 = 2
    """8-bit codes with per-block scales."""
    INT4 = 3
    """4-bit codes with per-block scales, two per byte."""

    @property
    def bits(self) -> int:
        """Bits of a quantized mode's codes."""
        return {ValueMode.INT8: 8, ValueMode.INT4: 4}[self]


class IndexEncoding(IntEnum):
    """How a tensor's kept positions are stored."""

    DENSE = 0
    """All ``n`` entries are sent; no positions."""
    GAPS = 1
    """Varint gaps between successive positions."""
    BITMAP = 2
    """One bit per entry, ``⌈n/8⌉`` bytes."""


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor as the wire carries it.

    Attributes:
        name: the tensor's name.
        dtype: dtype of the array the receiver gets back.
        shape: its shape.
        mode: how ``values`` are stored.
        indices: strictly increasing flat positions of the sent entries; ``None`` if dense.
        values: RAW: the flat array itself; FLOAT32: float32 values; INT8/INT4: int8 codes.
        scales: float32 per-block scales of INT8/INT4, else ``None``.
        block_size: values per scale of INT8/INT4, else 0.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    mode: ValueMode
    indices: np.ndarray | None
    values: np.ndarray
    scales: np.ndarray | None = None
    block_size: int = 0

    def __post_init__(self) -> None:
        quantized = self.mode in (ValueMode.INT8, ValueMode.INT4)
        if quantized != (self.scales is not None) or quantized != (self.block_size > 0):
            raise ValueError(f"tensor {self.name!r}: scales and block_size are required for "
                             f"INT8/INT4 and not allowed for {self.mode.name}")
        count = self.size if self.indices is None else self.indices.size
        if self.values.size != count:
            raise ValueError(f"tensor {self.name!r}: expected {count} values, got "
                             f"{self.values.size}")

    @property
    def size(self) -> int:
        """Entries of the full tensor."""
        return math.prod(self.shape)

    def sent_values(self) -> np.ndarray:
        """The sent entries as the receiver decodes them (RAW: the flat array)."""
        if self.scales is not None:
            return dequantize(self.values, self.scales, self.mode.bits, self.block_size)
        return self.values

    def dense(self) -> np.ndarray:
        """The full array, writable: the sent entries in place, zeros elsewhere, in ``dtype``."""
        sent = self.sent_values()
        if self.indices is None:
            full = sent.astype(self.dtype, copy=False)
            return (full if full.flags.writeable else full.copy()).reshape(self.shape)
        full = np.zeros(self.size, dtype=self.dtype)
        full[self.indices] = sent
        return full.reshape(self.shape)


def encode(tensors: Sequence[EncodedTensor]) -> bytes:
    """The payload bytes of ``tensors``, in order, sealed with a CRC-32.

    Raises:
        ValueError: if a name, shape or count does not fit the format.
    """
    table: list[bytes] = []
    data: list[bytes] = []
    for tensor in tensors:
        entry, chunks = _encode_tensor(tensor)
        table.append(entry)
        data.extend(chunks)
    deflated = zlib.compress(b"".join(table), TABLE_COMPRESSION_LEVEL)
    body = b"".join([_HEADER.pack(MAGIC, VERSION, len(tensors), len(deflated)), deflated, *data])
    return body + _CRC.pack(zlib.crc32(body))


def _encode_tensor(tensor: EncodedTensor) -> tuple[bytes, list[bytes]]:
    """``(table entry, data chunks)`` of one tensor."""
    name = tensor.name.encode("utf-8")
    dtype = tensor.dtype.str.encode("ascii")
    if len(name) > 0xFFFF:
        raise ValueError(f"tensor name must be at most 65535 bytes, got {len(name)}")
    if len(tensor.shape) > MAX_NDIM or tensor.size > MAX_ELEMENTS:
        raise ValueError(f"tensor {tensor.name!r} must have at most {MAX_NDIM} dimensions and "
                         f"{MAX_ELEMENTS} entries, got shape {tensor.shape}")
    entry = [struct.pack("<H", len(name)), name, struct.pack("<B", len(dtype)), dtype,
             struct.pack(f"<B{len(tensor.shape)}I", len(tensor.shape), *tensor.shape),
             ]
    data: list[bytes] = []
    if tensor.indices is None:
        entry.append(struct.pack("<BB", tensor.mode, IndexEncoding.DENSE))
    else:
        encoding, index_bytes = _encode_positions(tensor.indices, tensor.size)
        entry.append(struct.pack("<BBII", tensor.mode, encoding, tensor.indices.size,
                                 len(index_bytes)))
        data.append(index_bytes)
    if tensor.scales is not None:
        entry.append(struct.pack("<I", tensor.block_size))
        data.append(tensor.scales.astype("<f4", copy=False).tobytes())
        codes = tensor.values
        data.append(pack_nibbles(codes) if tensor.mode is ValueMode.INT4
                    else codes.astype(np.int8, copy=False).tobytes())
    elif tensor.mode is ValueMode.FLOAT32:
        data.append(tensor.values.astype("<f4", copy=False).tobytes())
    else:
        data.append(np.ascontiguousarray(tensor.values).tobytes())
    return b"".join(entry), data


def _encode_positions(indices: np.ndarray, size: int) -> tuple[IndexEncoding, bytes]:
    """The shorter of the varint-gap and bitmap encodings of ``indices`` (gaps on a tie)."""
    gaps = encode_varints(np.diff(indices, prepend=np.int64(0)))  # p_1, p_2 - p_1, ...
    if -(-size // 8) >= len(gaps):
        return IndexEncoding.GAPS, gaps
    bits = np.zeros(size, dtype=bool)
    bits[indices] = True
    return IndexEncoding.BITMAP, np.packbits(bits, bitorder="little").tobytes()


class _Reader:
    """Reads one section of a payload front to back; every read checks the bytes are there."""

    def __init__(self, data: memoryview | bytes, section: str) -> None:
        self.data = memoryview(data)
        self.section = section
        self.offset = 0
        self.tensor = ""

    def take(self, size: int, what: str) -> memoryview:
        left = len(self.data) - self.offset
        if size > left:
            where = f" of tensor {self.tensor!r}" if self.tensor else ""
            raise WireFormatError(f"truncated {self.section}: expected {size} bytes for {what}"
                                  f"{where} at offset {self.offset}, only {left} left")
        chunk = self.data[self.offset: self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def check_consumed(self, count: int) -> None:
        if self.offset != len(self.data):
            raise WireFormatError(f"length mismatch: {count} tensors end at byte {self.offset} "
                                  f"of the {self.section}, which has {len(self.data)} bytes")


class _TensorParser:
    """Parses one tensor: its entry from the table reader, its arrays from the data reader."""

    def __init__(self, table: _Reader, data: _Reader) -> None:
        self.table = table
        self.data = data
        self.name = ""

    def fail(self, message: str) -> WireFormatError:
        return WireFormatError(f"tensor {self.name!r}: {message}")

    def parse(self, number: int, expected: np.ndarray | None = None,
              expected_name: str | None = None) -> EncodedTensor:
        table = self.table
        table.tensor = self.data.tensor = ""
        (name_length,) = table.unpack("<H", f"the name length of tensor #{number}")
        try:
            self.name = bytes(table.take(name_length, f"the name of tensor #{number}")).decode(
                "utf-8")
        except UnicodeDecodeError as error:
            raise WireFormatError(f"name of tensor #{number} is not UTF-8: {error}") from None
        table.tensor = self.data.tensor = self.name
        (dtype_length,) = table.unpack("<B", "the dtype length")
        dtype = self.parse_dtype(bytes(table.take(dtype_length, "the dtype")))
        (ndim,) = table.unpack("<B", "the number of dimensions")
        if ndim > MAX_NDIM:
            raise self.fail(f"expected at most {MAX_NDIM} dimensions, got {ndim}")
        shape = tuple(int(d) for d in table.unpack(f"<{ndim}I", "the shape"))
        size = math.prod(shape)
        if size > MAX_ELEMENTS:
            raise self.fail(f"expected at most {MAX_ELEMENTS} entries, shape {shape} has {size}")
        if expected is not None and (self.name != expected_name or shape != expected.shape
                                     or dtype != expected.dtype):
            raise WireFormatError(f"tensor #{number}: expected {expected_name!r}, "
                                  f"{expected.dtype} of shape {expected.shape}, got "
                                  f"{_show_name(self.name)}, {dtype} of shape {shape}")
        mode_code, encoding = table.unpack("<BB", "the mode and index encoding")
        if mode_code not in ValueMode._value2member_map_:
            raise self.fail(f"unknown value mode {mode_code}; expected one of "
                            f"{[int(m) for m in ValueMode]}")
        mode = ValueMode(mode_code)
        if encoding not in IndexEncoding._value2member_map_:
            raise self.fail(f"unknown index encoding {encoding}; expected one of "
                            f"{[int(e) for e in IndexEncoding]}")
        sparse = encoding != IndexEncoding.DENSE
        if (mode is ValueMode.RAW) != (dtype.kind != "f"):
            raise self.fail(f"mode {mode.name} does not fit dtype {dtype.str}: RAW is for "
                            "non-floating dtypes, the other modes for floating ones")
        if mode is ValueMode.RAW and sparse:
            raise self.fail("RAW tensors are always dense, got a sparse one")
        indices = self.parse_indices(size, IndexEncoding(encoding)) if sparse else None
        count = size if indices is None else indices.size
        if mode is ValueMode.RAW:
            values = np.frombuffer(self.data.take(count * dtype.itemsize, f"{count} values"),
                                   dtype=dtype)
            return EncodedTensor(self.name, dtype, shape, mode, None, values)
        if mode is ValueMode.FLOAT32:
            values = np.frombuffer(self.data.take(4 * count, f"{count} float32 values"),
                                   dtype="<f4")
            return EncodedTensor(self.name, dtype, shape, mode, indices, values)
        block_size, scales = self.parse_scales(count)
        return EncodedTensor(self.name, dtype, shape, mode, indices,
                             self.parse_codes(mode, count), scales, block_size)

    def parse_dtype(self, text: bytes) -> np.dtype:
        if _DTYPE_PATTERN.fullmatch(text) is None:
            raise self.fail("expected a little-endian bool, integer or float dtype string "
                            f"such as '<f4', '<i8' or '|b1', got {text!r}")
        return np.dtype(text.decode("ascii"))

    def parse_indices(self, size: int, encoding: IndexEncoding) -> np.ndarray:
        count, length = self.table.unpack("<II", "the kept count and index length")
        if count > size:
            raise self.fail(f"expected at most {size} kept entries, got {count}")
        if encoding is IndexEncoding.BITMAP:
            return self.parse_bitmap(size, count, length)
        try:
            gaps = decode_varints(self.data.take(length, "the index gaps"), count)
        except WireFormatError as error:
            raise self.fail(f"index gaps: {error}") from None
        if count > 1 and gaps[1:].min() <= 0:
            raise self.fail("indices must be strictly increasing, got a gap of "
                            f"{int(gaps[1:].min())}")
        indices = np.cumsum(gaps)
        if count and indices[-1] >= size:
            raise self.fail(f"index {int(indices[-1])} out of range for {size} entries")
        return indices

    def parse_bitmap(self, size: int, count: int, length: int) -> np.ndarray:
        if length != -(-size // 8):
            raise self.fail(f"a bitmap of {size} entries has {-(-size // 8)} bytes, got "
                            f"{length}")
        packed = np.frombuffer(self.data.take(length, "the index bitmap"), dtype=np.uint8)
        bits = np.unpackbits(packed, bitorder="little")
        if bits[size:].any():
            raise self.fail("index bitmap: padding bits after the last entry must be 0")
        indices = np.flatnonzero(bits[:size])
        if indices.size != count:
            raise self.fail(f"index bitmap: expected {count} set bits, got {indices.size}")
        return indices

    def parse_scales(self, count: int) -> tuple[int, np.ndarray]:
        (block_size,) = self.table.unpack("<I", "the block size")
        if block_size < 1:
            raise self.fail(f"block size must be >= 1, got {block_size}")
        num_blocks = -(-count // block_size)
        scales = np.frombuffer(self.data.take(4 * num_blocks, f"{num_blocks} scales"),
                               dtype="<f4")
        if scales.size and not (np.isfinite(scales).all() and scales.min() >= 0):
            raise self.fail("scales must be finite and >= 0, got "
                            f"range [{scales.min()}, {scales.max()}]")
        return block_size, scales

    def parse_codes(self, mode: ValueMode, count: int) -> np.ndarray:
        if mode is ValueMode.INT4:
            try:
                return unpack_nibbles(self.data.take((count + 1) // 2, f"{count} 4-bit codes"),
                                      count)
            except WireFormatError as error:
                raise self.fail(str(error)) from None
        codes = np.frombuffer(self.data.take(count, f"{count} 8-bit codes"), dtype=np.int8)
        if codes.size and codes.min() == -128:
            raise self.fail("8-bit code -128 is never produced; the payload is corrupted")
        return codes


def _inflate_table(deflated: memoryview) -> bytes:
    """The tensor table, inflated, at most ``MAX_TABLE_BYTES``."""
    inflater = zlib.decompressobj()
    try:
        table = inflater.decompress(deflated, MAX_TABLE_BYTES)
    except zlib.error as error:
        raise WireFormatError(f"tensor table does not inflate: {error}") from None
    if inflater.unconsumed_tail:
        raise WireFormatError(f"tensor table inflates to more than {MAX_TABLE_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise WireFormatError("tensor table: expected one complete zlib stream, got a "
                              f"{'truncated' if not inflater.eof else 'longer'} one")
    return table


def parse(payload: bytes, expected: Mapping[str, np.ndarray] | None = None
          ) -> list[EncodedTensor]:
    """The tensors of a payload, after checking magic, version, checksum and every field.

    With ``expected`` (the model's arrays) each tensor's name, dtype and shape are checked as
    soon as its table entry is read, before its positions or values are: a payload cannot
    make the parser allocate more than the model it claims to update.

    Raises:
        WireFormatError: saying what was expected and what came.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"payload must be bytes, got {type(payload).__name__}")
    view = memoryview(payload).cast("B")
    minimum = _HEADER.size + _CRC.size
    if len(view) < minimum:
        raise WireFormatError(f"truncated payload: expected at least {minimum} bytes (header and "
                              f"checksum), got {len(view)}")
    magic, version, count, table_length = _HEADER.unpack(view[: _HEADER.size])
    if magic != MAGIC:
        raise WireFormatError(f"not a compressed update: expected magic {MAGIC!r}, got "
                              f"{bytes(magic)!r}")
    if version != VERSION:
        raise WireFormatError(f"unsupported payload version: expected {VERSION}, got {version}")
    (stored,) = _CRC.unpack(view[-_CRC.size:])
    actual = zlib.crc32(view[: -_CRC.size])
    if stored != actual:
        raise WireFormatError(f"checksum mismatch: payload says {stored:#010x}, bytes give "
                              f"{actual:#010x} (corrupted or truncated)")
    body = _Reader(view[_HEADER.size: -_CRC.size], "payload")
    table = _Reader(_inflate_table(body.take(table_length, "the tensor table")), "tensor table")
    data = _Reader(body.take(len(body.data) - body.offset, "the data"), "data")
    parser = _TensorParser(table, data)
    tensors: list[EncodedTensor] = []
    names: set[str] = set()
    layout = list((expected or {}).items())
    if expected is not None and count != len(layout):
        raise WireFormatError(f"expected the {len(layout)} arrays of the model, the payload "
                              f"declares {count}")
    for number in range(count):
        tensor = (parser.parse(number, layout[number][1], layout[number][0]) if layout
                  else parser.parse(number))
        if tensor.name in names:
            raise WireFormatError(f"tensor name {tensor.name!r} appears twice")
        names.add(tensor.name)
        tensors.append(tensor)
    table.check_consumed(count)
    data.check_consumed(count)
    return tensors


def decode(payload: bytes, expected: Mapping[str, np.ndarray] | None = None,
           max_bytes: int = MAX_DECODED_BYTES) -> dict[str, np.ndarray]:
    """The arrays a payload carries: names and order, shapes and dtypes as encoded.

    Dense tensors come back as sent; sparse ones with zeros where entries were dropped;
    quantized values as ``code · scale / L``. Nothing is allocated for the decoded arrays
    before the declared layout has passed both bounds: the tensors must be exactly
    ``expected``'s (names in order, shapes, dtypes), if given, and their decoded bytes must
    total at most ``max_bytes``. A payload of a few bytes can therefore not ask for more
    memory than the model it claims to update.

    Args:
        payload: The payload bytes.
        expected: The arrays the payload must update (e.g. the global model), or ``None``.
        max_bytes: Cap on the decoded arrays' total bytes.

    Raises:
        WireFormatError: if the payload is malformed, truncated, corrupted or inconsistent,
            does not fit ``expected``, or declares more than ``max_bytes``.
    """
    tensors = parse(payload, expected)
    if expected is not None:
        check_layout(tensors, expected)
    declared = sum(t.size * t.dtype.itemsize for t in tensors)
    if declared > max_bytes:
        raise WireFormatError(f"payload declares {declared} bytes of arrays, at most "
                              f"{max_bytes} are accepted")
    return {tensor.name: tensor.dense() for tensor in tensors}


def _show_name(name: str) -> str:
    """A tensor name for an error message, at most 60 characters (a payload may hold any)."""
    return repr(name) if len(name) <= 60 else repr(name[:57] + "...")


def check_layout(tensors: Sequence[EncodedTensor], expected: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`WireFormatError` unless ``tensors`` have ``expected``'s layout.

    The layout is the names in order, and each array's shape and dtype.
    """
    names = [t.name for t in tensors]
    if names != list(expected):
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        raise WireFormatError(f"expected the {len(expected)} arrays of the model in order, "
                              f"missing {missing[:10]}, unexpected "
                              f"{[_show_name(n) for n in extra[:10]]}")
    for tensor in tensors:
        reference = expected[tensor.name]
        if tensor.shape != tuple(reference.shape) or tensor.dtype != reference.dtype:
            raise WireFormatError(f"tensor {tensor.name!r}: expected {reference.dtype} of shape "
                                  f"{tuple(reference.shape)}, got {tensor.dtype} of shape "
                                  f"{tensor.shape}")
