"""Compression of updates: top-k with error feedback, quantization, a compact wire format.

``compress(update, spec, residual, rng)`` turns named arrays into payload bytes and the new
error-feedback residual; ``decode(payload)`` gives back exactly the arrays that were encoded
and raises :class:`WireFormatError` on any malformed payload. ``payload_to_record`` and
``payload_from_record`` carry a payload in a Flower ArrayRecord.
"""

from fedmosaic.clients.compression.exceptions import WireFormatError
from fedmosaic.clients.compression.feedback import compress
from fedmosaic.clients.compression.flower_records import (
    payload_from_record,
    payload_to_record,
    residual_from_record,
    residual_to_record,
)
from fedmosaic.clients.compression.spec import CompressionSpec
from fedmosaic.clients.compression.wire import decode

__all__ = [
    "CompressionSpec",
    "WireFormatError",
    "compress",
    "decode",
    "payload_from_record",
    "payload_to_record",
    "residual_from_record",
    "residual_to_record",
]
