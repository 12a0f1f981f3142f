"""The wire format: hand-computed bytes, exact round trips, and every corruption rejected."""

import struct
import zlib

import numpy as np
import pytest

from fedmosaic.compression import CompressionSpec, WireFormatError, compress, decode
from fedmosaic.compression.wire import (
    MAX_ELEMENTS,
    VERSION,
    EncodedTensor,
    IndexEncoding,
    ValueMode,
    encode,
)

F4 = np.dtype("<f4")


def reseal(body: bytes) -> bytes:
    """``body`` with a correct CRC-32 appended (to test the checks behind the checksum)."""
    return body + struct.pack("<I", zlib.crc32(body))


def tensor_header(name: bytes, dtype: bytes, shape: tuple[int, ...], mode: int,
                  sparse: int) -> bytes:
    """The first fields of a tensor's table entry."""
    return (struct.pack("<H", len(name)) + name + struct.pack("<B", len(dtype)) + dtype
            + struct.pack(f"<B{len(shape)}I", len(shape), *shape) + struct.pack("<BB", mode,
                                                                                  sparse))


def sealed_body(table: bytes, data: bytes, count: int = 1,
                deflated: bytes | None = None) -> bytes:
    """A payload of ``count`` tensors with this (inflated) table and data, correctly sealed."""
    deflated = zlib.compress(table, 9) if deflated is None else deflated
    return reseal(b"FMZC" + bytes([VERSION]) + struct.pack("<II", count, len(deflated))
                  + deflated + data)


def test_hand_computed_dense_float32_payload():
    values = np.array([1.0, -2.0], dtype=np.float32)
    expected = sealed_body(tensor_header(b"a", b"<f4", (2,), 1, 0), values.tobytes())

    payload, _ = compress({"a": values}, CompressionSpec(), None, np.random.default_rng(0))

    assert payload == expected


def test_hand_computed_sparse_payload_with_index_gaps():
    update = {"w": np.zeros(40, dtype=np.float32)}
    update["w"][[1, 30]] = [5.0, -3.0]
    # k = ceil(0.05 * 40) = 2: positions 1, 30 -> gaps 1, 29 -> varint bytes 01 1d, shorter
    # than the 5-byte bitmap
    expected = sealed_body(tensor_header(b"w", b"<f4", (40,), 1, 1) + struct.pack("<II", 2, 2),
                           b"\x01\x1d" + np.array([5.0, -3.0], np.float32).tobytes())

    payload, _ = compress(update, CompressionSpec(topk_ratio=0.05), None,
                          np.random.default_rng(0))

    assert payload == expected
    assert np.flatnonzero(decode(payload)["w"]).tolist() == [1, 30]


def test_hand_computed_sparse_payload_with_an_index_bitmap():
    update = {"w": np.array([0.0, 5.0, 0.0, -3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0],
                            dtype=np.float32)}
    # k = ceil(0.3 * 10) = 3: positions 1, 3, 9; gaps take 3 bytes, the bitmap 2:
    # bits 1 and 3 -> 0b00001010 = 0x0a, bit 9 -> 0b00000010 = 0x02
    expected = sealed_body(tensor_header(b"w", b"<f4", (10,), 1, 2) + struct.pack("<II", 3, 2),
                           b"\x0a\x02" + np.array([5.0, -3.0, 2.0], np.float32).tobytes())

    payload, _ = compress(update, CompressionSpec(topk_ratio=0.3), None,
                          np.random.default_rng(0))

    assert payload == expected
    assert decode(payload)["w"].tolist() == [0.0, 5.0, 0.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize(("ratio", "encoding"), [(0.01, IndexEncoding.GAPS),
                                                 (0.5, IndexEncoding.BITMAP)])
def test_the_shorter_index_encoding_is_chosen(ratio, encoding):
    from fedmosaic.compression.wire import parse

    update = {"w": np.random.default_rng(0).normal(size=4000).astype(np.float32)}
    payload, _ = compress(update, CompressionSpec(topk_ratio=ratio, bits=4), None,
                          np.random.default_rng(0))
    table = zlib.decompress(payload[13: 13 + struct.unpack("<I", payload[9:13])[0]])
    kept = parse(payload)[0].indices

    # the encoding byte follows name, dtype and shape: 2 + 1 + 1 + 3 + 1 + 4 bytes, then mode
    assert table[13] == encoding
    assert kept.size == int(np.ceil(ratio * 4000))
    np.testing.assert_array_equal(np.flatnonzero(decode(payload)["w"]), kept)


def mixed_update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(4, 3, 5)).astype(np.float32),
        "bn.num_batches_tracked": np.array(12345678901, dtype=np.int64),
        "conv.bias": rng.normal(size=4).astype(np.float32),
        "mask": np.array([True, False, True]),
        "scalar": np.array(0.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "double": rng.normal(size=7),
    }


@pytest.mark.parametrize("spec", [
    CompressionSpec(), CompressionSpec(topk_ratio=0.1), CompressionSpec(bits=8),
    CompressionSpec(topk_ratio=0.3, bits=4, block_size=3), CompressionSpec(topk_ratio=1e-6),
])
def test_round_trip_keeps_names_order_shapes_dtypes_and_exact_integers(spec):
    update = mixed_update()

    payload, residual = compress(update, spec, None, np.random.default_rng(1))
    decoded = decode(payload)

    assert list(decoded) == list(update)
    for name, array in update.items():
        assert decoded[name].shape == array.shape
        assert decoded[name].dtype == array.dtype
    assert decoded["bn.num_batches_tracked"] == 12345678901
    assert decoded["mask"].tolist() == [True, False, True]
    assert "bn.num_batches_tracked" not in residual and "mask" not in residual
    for name in residual:  # the residual is exactly what the payload did not carry
        sent = np.asarray(update[name], np.float32) - residual[name]
        np.testing.assert_allclose(decoded[name].astype(np.float32), sent, atol=1e-6)


def test_lossless_spec_decodes_float32_bit_exactly():
    update = {"w": np.random.default_rng(2).normal(size=1000).astype(np.float32)}

    payload, residual = compress(update, CompressionSpec(), None, np.random.default_rng(0))

    np.testing.assert_array_equal(decode(payload)["w"], update["w"])
    assert not residual["w"].any()


def test_empty_update_round_trips():
    payload, residual = compress({}, CompressionSpec(bits=4), None, np.random.default_rng(0))

    assert decode(payload) == {} and residual == {}


@pytest.fixture(scope="module")
def small_payload() -> bytes:
    update = {"w": np.arange(-6, 6, dtype=np.float32).reshape(3, 4),
              "n": np.array(3, dtype=np.int64)}
    return compress(update, CompressionSpec(topk_ratio=0.5, bits=4, block_size=4), None,
                    np.random.default_rng(0))[0]


def test_every_truncation_is_rejected(small_payload):
    for end in range(len(small_payload)):
        with pytest.raises(WireFormatError):
            decode(small_payload[:end])


def test_every_flipped_bit_is_rejected(small_payload):
    for position in range(len(small_payload)):
        for bit in range(8):
            corrupted = bytearray(small_payload)
            corrupted[position] ^= 1 << bit
            with pytest.raises(WireFormatError):
                decode(bytes(corrupted))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: b"XXXX" + p[4:], "expected magic b'FMZC'"),
    (lambda p: p[:4] + bytes([1]) + p[5:], "expected 2, got 1"),
    (lambda p: p + b"\x00", "checksum mismatch"),
    (lambda p: p[:-1] + bytes([p[-1] ^ 0xFF]), "checksum mismatch"),
    (lambda p: p[:6], "expected at least 17 bytes"),
    (lambda p: reseal(p[:-4] + b"\x00"), "length mismatch"),
    (lambda p: reseal(p[:5] + struct.pack("<I", 3) + p[9:-4]), "truncated tensor table"),
    (lambda p: reseal(p[:-5]), "truncated data"),
    (lambda p: reseal(p[:9] + struct.pack("<I", 10**6) + p[13:-4]), "truncated payload"),
])
def test_corrupted_payloads_name_what_was_expected(small_payload, edit, message):
    with pytest.raises(WireFormatError, match=message):
        decode(edit(small_payload))


@pytest.mark.parametrize("payload", [b"", b"not a payload", None, "FMZC"])
def test_non_payloads_are_rejected(payload):
    with pytest.raises(WireFormatError):
        decode(payload)


def sealed(*tensors: EncodedTensor) -> bytes:
    return encode(list(tensors))


def float_tensor(indices, values, shape=(4,), name="w"):
    return EncodedTensor(name, F4, shape, ValueMode.FLOAT32,
                         None if indices is None else np.array(indices, np.int64),
                         np.array(values, np.float32))


def one_tensor_body(header: bytes, table_rest: bytes, data: bytes) -> bytes:
    return sealed_body(header + table_rest, data)


ONE = np.ones(1, np.float32).tobytes()


@pytest.mark.parametrize(("payload", "message"), [
    (one_tensor_body(tensor_header(b"w", b"<f4", (4,), 1, 1), struct.pack("<II", 2, 2),
                     b"\x01\x08" + ONE * 2), "index 9 out of range for 4 entries"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (4,), 1, 1), struct.pack("<II", 2, 2),
                     b"\x02\x00" + ONE * 2), "strictly increasing"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (12,), 1, 2), struct.pack("<II", 1, 1),
                     b"\x01" + ONE), "a bitmap of 12 entries has 2 bytes, got 1"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (12,), 1, 2), struct.pack("<II", 1, 2),
                     b"\x03\x00" + ONE), "expected 1 set bits, got 2"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (12,), 1, 2), struct.pack("<II", 1, 2),
                     b"\x00\x10" + ONE), "padding bits"),
    (sealed(float_tensor(None, [1, 2, 3, 4]), float_tensor(None, [1, 2, 3, 4])), "twice"),
    (sealed(EncodedTensor("q", F4, (2,), ValueMode.INT8, None, np.array([-128, 1], np.int8),
                          np.ones(1, np.float32), 2)), "-128"),
    (sealed(EncodedTensor("q", F4, (2,), ValueMode.INT8, None, np.array([1, 1], np.int8),
                          np.array([-1.0], np.float32), 2)), "scales must be finite and >= 0"),
    (sealed(EncodedTensor("q", F4, (2,), ValueMode.INT8, None, np.array([1, 1], np.int8),
                          np.array([np.nan], np.float32), 2)), "scales must be finite"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (4,), 9, 0), b"", b""), "unknown value mode 9"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (4,), 1, 3), b"", b""),
     "unknown index encoding 3"),
    (one_tensor_body(tensor_header(b"w", b"O", (1,), 0, 0), b"", b""), "dtype"),
    (one_tensor_body(tensor_header(b"w", b">f4", (1,), 1, 0), b"", ONE), "little-endian"),
    (one_tensor_body(tensor_header(b"w", b"zz", (1,), 1, 0), b"", b""), "dtype string"),
    (one_tensor_body(tensor_header(b"w", b"f,8", (1,), 1, 0), b"", ONE), "dtype string"),
    (one_tensor_body(tensor_header(b"w", b"<c8", (1,), 1, 0), b"", ONE), "dtype string"),
    (one_tensor_body(tensor_header(b"w", b"<i8", (1,), 1, 0), b"", ONE), "does not fit"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (1,), 0, 0), b"", ONE), "does not fit"),
    (one_tensor_body(tensor_header(b"w", b"<i8", (1,), 0, 1), b"", b""), "always dense"),
    (one_tensor_body(tensor_header(b"\xff", b"<f4", (1,), 1, 0), b"", ONE), "not UTF-8"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (MAX_ELEMENTS, 2), 1, 1),
                     struct.pack("<II", 0, 0), b""), "at most"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (4,), 1, 1), struct.pack("<II", 5, 0), b""),
     "at most 4 kept entries"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (4,), 1, 1), struct.pack("<II", 2, 1),
                     b"\x01" + ONE * 2), "expected 2 varints"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (4,), 2, 0), struct.pack("<I", 0), b""),
     "block size must be >= 1"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (3,), 3, 0), struct.pack("<I", 4),
                     ONE + bytes([0x11, 0xF1])), "padding"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (2,), 3, 0), struct.pack("<I", 4),
                     ONE + bytes([0x01])), "nibble 0"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (1,), 1, 0), b"", ONE + b"\x00"),
     "length mismatch: 1 tensors end at byte 4 of the data"),
    (one_tensor_body(tensor_header(b"w", b"<f4", (1,), 1, 0), b"\x00", ONE),
     "length mismatch: 1 tensors end at byte 14 of the tensor table"),
    (sealed_body(b"", b"", count=0, deflated=b"garbage"), "does not inflate"),
    (sealed_body(b"", b"", count=0, deflated=zlib.compress(b"x" * 100)[:-3]), "truncated"),
    (sealed_body(b"", b"", count=0, deflated=zlib.compress(b"") + b"\x00"), "longer"),
    (sealed_body(b"", b"", count=0, deflated=zlib.compress(bytes(1 << 25))),
     "more than 16777216 bytes"),
])
def test_inconsistent_payloads_with_a_valid_checksum_are_rejected(payload, message):
    with pytest.raises(WireFormatError, match=message):
        decode(payload)


def test_decoded_sparse_tensor_has_zeros_where_nothing_was_sent():
    payload = sealed(float_tensor([0, 3], [7.0, -1.0]))

    assert decode(payload)["w"].tolist() == [7.0, 0.0, 0.0, -1.0]


def test_encoded_tensor_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="expected 2 values"):
        float_tensor([0, 1], [1.0])
    with pytest.raises(ValueError, match="scales and block_size"):
        EncodedTensor("q", F4, (1,), ValueMode.INT8, None, np.zeros(1, np.int8))


@pytest.mark.parametrize("spec", [CompressionSpec(), CompressionSpec(bits=8),
                                  CompressionSpec(topk_ratio=0.5)])
def test_decoded_arrays_are_writable_copies_independent_of_the_payload(spec):
    update = {"w": np.arange(6, dtype=np.float32), "n": np.array([3], np.int64)}
    payload, _ = compress(update, spec, None, np.random.default_rng(0))

    decoded = decode(bytearray(payload))
    decoded["w"] += 1.0
    decoded["n"] += 1

    assert decode(memoryview(payload))["n"].tolist() == [3]


def mutated(body: bytes, rng: np.random.Generator) -> bytes:
    """``body`` with 1-3 random bytes replaced."""
    edited = bytearray(body)
    for position in rng.integers(0, len(edited), rng.integers(1, 4)):
        edited[position] = rng.integers(0, 256)
    return bytes(edited)


@pytest.fixture(scope="module")
def mixed_payload_parts():
    """(table, data) of a payload with every mode, dense and sparse tensors."""
    rng = np.random.default_rng(7)
    update = {"dense": rng.normal(size=(5, 3)).astype(np.float32),
              "long": rng.normal(size=300).astype(np.float32),
              "count": np.array([9], np.int64)}
    # index bitmaps at top-k 0.4 and 0.3, index gaps at 0.02
    tensors = [wire_tensor for spec in (CompressionSpec(), CompressionSpec(0.4, 8, 2),
                                        CompressionSpec(0.3, 4, 3), CompressionSpec(0.02, 4, 3))
               for wire_tensor in parse_renamed(update, spec, rng)]
    payload = encode(tensors)
    table_length = struct.unpack("<I", payload[9:13])[0]
    return zlib.decompress(payload[13: 13 + table_length]), payload[13 + table_length: -4], len(
        tensors)


def parse_renamed(update, spec, rng):
    from fedmosaic.compression.wire import parse

    payload, _ = compress(update, spec, None, rng)
    return [EncodedTensor(f"{t.name}-{spec.bits}-{spec.topk_ratio}", t.dtype, t.shape, t.mode,
                          t.indices, t.values, t.scales, t.block_size) for t in parse(payload)]


@pytest.mark.parametrize("section", ["table", "data"])
def test_random_edits_behind_a_valid_checksum_raise_only_wire_format_errors(
        mixed_payload_parts, section):
    table, data, count = mixed_payload_parts
    assert len(decode(sealed_body(table, data, count))) == count
    rng = np.random.default_rng(11)
    rejected = 0
    for _ in range(1500):
        edited_table = mutated(table, rng) if section == "table" else table
        edited_data = mutated(data, rng) if section == "data" else data
        try:
            decoded = decode(sealed_body(edited_table, edited_data, count))
        except WireFormatError:
            rejected += 1
            continue
        # an edit that still parses is a well-formed payload of other values
        assert len(decoded) == count
    assert rejected > 0
