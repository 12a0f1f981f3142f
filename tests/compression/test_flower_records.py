"""Payloads and residuals in Flower records survive Flower's own serialization."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from fedmosaic.compression import (
    CompressionSpec,
    WireFormatError,
    arrays_of,
    arrays_record,
    compress,
    decode,
    payload_from_record,
    payload_to_record,
)


def over_the_wire(record: ArrayRecord) -> ArrayRecord:
    """``record`` deflated to the bytes Flower sends and inflated again."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()}
    return inflate_object_from_contents(record.object_id, contents)


def test_payload_survives_flower_serialization_and_costs_few_bytes_extra():
    update = {"w": np.arange(-50, 50, dtype=np.float32)}
    payload, _ = compress(update, CompressionSpec(topk_ratio=0.1, bits=4), None,
                          np.random.default_rng(0))
    record = payload_to_record(payload)

    received = payload_from_record(over_the_wire(record))

    assert received == payload
    np.testing.assert_array_equal(decode(received)["w"], decode(payload)["w"])
    wire_bytes = sum(len(o.deflate()) for o in get_all_nested_objects(record).values())
    assert wire_bytes - len(payload) < 400  # Flower's object headers, no NumPy header


def test_residual_round_trips_in_order():
    residual = {"b": np.array([1.5, -2.0], np.float32), "a": np.zeros((2, 2), np.float32)}

    back = arrays_of(over_the_wire(arrays_record(residual)))

    assert list(back) == ["b", "a"]
    np.testing.assert_array_equal(back["b"], residual["b"])
    assert back["a"].shape == (2, 2)


@pytest.mark.parametrize(("record", "message"), [
    ({"payload": b"x"}, "expected an ArrayRecord"),
    (ArrayRecord({"other": Array(np.zeros(2, np.uint8))}), "single key 'payload'"),
    (ArrayRecord({"payload": Array(np.zeros(2, np.uint8)), "x": Array(np.zeros(1))}),
     "single key"),
    (ArrayRecord({"payload": Array(np.zeros(2, np.uint8))}), "expected stype"),
    (ArrayRecord({"payload": Array(dtype="float32", shape=(2,),
                                   stype="fedmosaic.compressed-update", data=b"ab")}),
     "dtype 'uint8'"),
    (ArrayRecord({"payload": Array(dtype="uint8", shape=(3,),
                                   stype="fedmosaic.compressed-update", data=b"ab")}),
     "carries 2 bytes"),
])
def test_records_that_are_not_payloads_are_rejected(record, message):
    with pytest.raises(WireFormatError, match=message):
        payload_from_record(record)


def test_payload_to_record_rejects_non_bytes():
    with pytest.raises(ValueError, match="payload must be bytes"):
        payload_to_record("FMZC")
