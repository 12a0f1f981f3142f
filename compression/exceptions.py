"""Errors of the compression codec."""

from __future__ import annotations


class WireFormatError(ValueError):
    """A payload is malformed, truncated, corrupted or inconsistent; it is not decoded.

    The message says what the decoder expected, what it found, and where (byte offset and
    tensor name when known). A receiver rejects the update that carried the payload.
    """
