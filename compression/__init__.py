"""Compression of updates: top-k with error feedback, quantization, a compact wire format.

``compress(update, spec, residual, rng)`` turns named arrays into payload bytes and the new
error-feedback residual; ``decode(payload)`` gives back exactly the arrays that were encoded
and raises :class:`WireFormatError` on any malformed payload. ``payload_to_record`` and
``payload_from_record`` carry a payload in a Flower ArrayRecord.

The package is the vocabulary of updates that cross a tier, shared by devices, edges and the
cloud: the codec, the topology (which edge a device's update goes to, ``topology.py``) and the
spool in which an edge's two processes hand compressed updates to each other (``spool.py``).
"""

from fedmosaic.compression.exceptions import WireFormatError
from fedmosaic.compression.feedback import compress
from fedmosaic.compression.flower_records import (
    arrays_of,
    arrays_record,
    payload_from_record,
    payload_to_record,
)
from fedmosaic.compression.spec import CompressionSpec
from fedmosaic.compression.wire import decode

__all__ = [
    "CompressionSpec",
    "WireFormatError",
    "arrays_of",
    "arrays_record",
    "compress",
    "decode",
    "payload_from_record",
    "payload_to_record",
]
