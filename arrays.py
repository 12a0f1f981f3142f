"""A Flower ``Array``'s values, decoded once, without NumPy's per-array header parse.

Flower carries every array as a ``.npy`` image (``numpy.save``) and decodes it again with
``numpy.load`` on every ``Array.numpy()`` call. ``numpy.load`` parses the ``.npy`` header, a
Python literal, with ``ast.literal_eval``: for a model of a hundred small arrays that costs
more than the data. Here a header is parsed by NumPy's own reader once and remembered by its
bytes (every reply of a round has the same arrays), the values are a read-only
``numpy.frombuffer`` view of the bytes, and an ``Array`` keeps its decoded values for every
later reader (the risk stage, validation, the aggregator).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

_DECODED = "_fedmosaic_values"
_NPY_MAGIC = b"\x93NUMPY"
NPY_HEADER_CACHE_ENTRIES = 4096
"""Distinct ``.npy`` headers :func:`npy_view` remembers (a round's arrays need a few dozen)."""
_npy_headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def array_values(array: Array) -> np.ndarray:
    """``array.numpy()``, decoded once per ``Array`` and shared (read-only) by every reader.

    A reply's arrays are read by the risk stage, validation and the aggregator; Flower decodes
    the bytes again on every ``numpy()`` call. The decoded array is kept on the ``Array``
    beside the bytes it came from and used while they are the same object. The values are a
    view of those bytes (:func:`npy_view`), not a copy.
    """
    cached = array.__dict__.get(_DECODED)
    if cached is not None and cached[0] is array.data:
        return cached[1]
    values = npy_view(array.data) if array.stype == SType.NUMPY else array.numpy()
    values.flags.writeable = False
    array.__dict__[_DECODED] = (array.data, values)
    return values


def npy_view(data: bytes) -> np.ndarray:
    """The array ``numpy.save`` wrote into ``data``, as a read-only view of those bytes.

    ``numpy.load`` parses the ``.npy`` header (a Python literal) with ``ast.literal_eval``
    for every array, which costs more than copying a small array. A header is parsed here
    by NumPy's own reader once and remembered by its bytes (headers repeat: every reply of
    a round has the same arrays); the data is then a ``numpy.frombuffer`` view.

    Raises:
        ValueError: If ``data`` is not a ``.npy`` image of format 1.0 or 2.0, holds Python
            objects, has a negative dimension, or is shorter than its header says.
    """
    if data[:6] != _NPY_MAGIC or len(data) < 12:
        raise ValueError(f"expected a .npy image (magic {_NPY_MAGIC!r}), got {data[:8]!r}")
    major = data[6]
    if major not in (1, 2) or data[7] != 0:
        raise ValueError(f"expected a .npy image of format 1.0 or 2.0, got {major}.{data[7]}")
    start = 10 if major == 1 else 12
    end = start + int.from_bytes(data[8:start], "little")
    header = bytes(data[:end])
    parsed = _npy_headers.get(header)
    if parsed is None:
        stream = io.BytesIO(header)
        np.lib.format.read_magic(stream)
        reader = (np.lib.format.read_array_header_1_0 if major == 1
                  else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = reader(stream)
        if dtype.hasobject:
            raise ValueError(f"expected numeric .npy data, got dtype {dtype} (Python objects)")
        if any(n < 0 for n in shape):
            raise ValueError(f"expected a shape of dimensions >= 0, got {shape}")
        if len(_npy_headers) >= NPY_HEADER_CACHE_ENTRIES:
            _npy_headers.clear()
        parsed = _npy_headers[header] = (shape, fortran_order, dtype)
    shape, fortran_order, dtype = parsed
    count = math.prod(shape)
    if len(data) - end < count * dtype.itemsize:
        raise ValueError(f"expected {count * dtype.itemsize} bytes of {dtype} data for shape "
                         f"{shape}, got {len(data) - end}")
    values = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    return values.reshape(shape, order="F" if fortran_order else "C")


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord``'s arrays as (read-only, shared) NumPy arrays, by name."""
    return {key: array_values(array) for key, array in record.items()}


def torch_state_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, decoded through :func:`array_values`.

    Each tensor owns a writable copy of its values (a module loads from it, an optimizer may
    keep it); the ``Array`` keeps the shared read-only view.
    """
    return {key: torch.from_numpy(np.array(array_values(array)))
            for key, array in record.items()}
