"""Varints and 4-bit packing: hand-computed bytes, round trips, and rejected input."""

import numpy as np
import pytest

from fedmosaic.compression import WireFormatError
from fedmosaic.compression.packing import (
    decode_varints,
    encode_varints,
    pack_nibbles,
    unpack_nibbles,
)


def test_hand_computed_varints():
    values = [0, 1, 127, 128, 300, 16384]
    # 300 = 0b10_0101100 -> 0xAC 0x02; 16384 = 2**14 -> 0x80 0x80 0x01
    expected = bytes([0x00, 0x01, 0x7F, 0x80, 0x01, 0xAC, 0x02, 0x80, 0x80, 0x01])

    encoded = encode_varints(np.array(values))

    assert encoded == expected
    assert decode_varints(encoded, len(values)).tolist() == values


def test_varints_round_trip_up_to_35_bits():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(0, 1 << 35, 500), [0, (1 << 35) - 1, 1 << 28]])

    assert decode_varints(encode_varints(values), values.size).tolist() == values.tolist()
    assert encode_varints(np.array([], np.int64)) == b""
    assert decode_varints(b"", 0).size == 0


@pytest.mark.parametrize("values", [[-1], [1 << 35]])
def test_encoding_rejects_values_out_of_range(values):
    with pytest.raises(ValueError, match="varint values"):
        encode_varints(np.array(values))


@pytest.mark.parametrize(("data", "count", "message"), [
    (b"\x01\x02", 3, "expected 3 varints, got 2"),
    (b"\x01\x02", 1, "expected 1 varints, got 2"),
    (b"\x01\x80", 1, "end inside a varint"),
    (b"", 1, "expected 1 varints, got 0 bytes"),
    (b"\x80\x80\x80\x80\x80\x01", 1, "longer than 5 bytes"),
])
def test_decoding_rejects_malformed_varints(data, count, message):
    with pytest.raises(WireFormatError, match=message):
        decode_varints(data, count)


def test_hand_computed_nibbles():
    # nibbles q + 8 = 1, 8, 15 (+ padding 0): bytes 0x81, 0x0F
    packed = pack_nibbles(np.array([-7, 0, 7], np.int8))

    assert packed == bytes([0x81, 0x0F])
    assert unpack_nibbles(packed, 3).tolist() == [-7, 0, 7]


def test_nibbles_round_trip():
    codes = np.random.default_rng(1).integers(-7, 8, 1001).astype(np.int8)

    assert unpack_nibbles(pack_nibbles(codes), codes.size).tolist() == codes.tolist()


def test_packing_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match=r"\[-7, 7\]"):
        pack_nibbles(np.array([8], np.int8))


@pytest.mark.parametrize(("data", "count", "message"), [
    (bytes([0x81]), 3, "expected 2 bytes"),
    (bytes([0x81, 0x1F]), 3, "padding nibble"),
    (bytes([0x80]), 2, "nibble 0"),
])
def test_unpacking_rejects_malformed_nibbles(data, count, message):
    with pytest.raises(WireFormatError, match=message):
        unpack_nibbles(data, count)
