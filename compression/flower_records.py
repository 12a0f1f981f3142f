"""How payloads and residuals travel in Flower records.

A payload is one :class:`flwr.app.Array` named ``payload`` whose ``data`` is the payload's
bytes as they are (``stype`` ``fedmosaic.compressed-update``, ``dtype`` ``uint8``), so the
serialized message carries no NumPy header on top of the codec's bytes. A residual is an
ordinary ArrayRecord of its float32 arrays (for ``context.state``); :func:`arrays_record` and
:func:`arrays_of` convert any named arrays (global weights, residuals) to and from a record.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedmosaic.compression.exceptions import WireFormatError

PAYLOAD_KEY = "payload"
PAYLOAD_STYPE = "fedmosaic.compressed-update"


def payload_to_record(payload: bytes) -> ArrayRecord:
    """An ArrayRecord carrying ``payload`` unchanged.

    Raises:
        ValueError: if ``payload`` is not bytes.
    """
    if not isinstance(payload, (bytes, bytearray)):
        raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)
    return ArrayRecord({PAYLOAD_KEY: Array(dtype="uint8", shape=(len(data),),
                                           stype=PAYLOAD_STYPE, data=data)})


def payload_from_record(record: ArrayRecord) -> bytes:
    """The payload an ArrayRecord made by :func:`payload_to_record` carries.

    Raises:
        WireFormatError: if the record is not such a record (other keys, stype, dtype, or a
            shape that does not match the data).
    """
    if not isinstance(record, ArrayRecord):
        raise WireFormatError(f"expected an ArrayRecord, got {type(record).__name__}")
    if list(record) != [PAYLOAD_KEY]:
        raise WireFormatError(f"expected a payload record with the single key {PAYLOAD_KEY!r}, "
                              f"got keys {list(record)}")
    array = record[PAYLOAD_KEY]
    if array.stype != PAYLOAD_STYPE or array.dtype != "uint8":
        raise WireFormatError(f"expected stype {PAYLOAD_STYPE!r} and dtype 'uint8', got "
                              f"{array.stype!r} and {array.dtype!r}")
    if tuple(array.shape) != (len(array.data),):
        raise WireFormatError(f"payload record says shape {tuple(array.shape)}, but carries "
                              f"{len(array.data)} bytes")
    return bytes(array.data)


def arrays_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding ``arrays`` in their order."""
    return ArrayRecord({name: Array(np.ascontiguousarray(array))
                        for name, array in arrays.items()})


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays as NumPy arrays, in the record's order."""
    return {name: array.numpy() for name, array in record.items()}
