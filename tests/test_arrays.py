import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmosaic.arrays import array_values, npy_view, record_arrays, torch_state_dict

DTYPES = st.one_of(hnp.floating_dtypes(endianness="="), hnp.integer_dtypes(endianness="<"),
                   hnp.integer_dtypes(endianness=">"), hnp.boolean_dtypes(),
                   hnp.complex_number_dtypes())


@settings(max_examples=150, deadline=None)
@given(values=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                  max_side=5)),
       fortran=st.booleans())
def test_the_view_equals_numpy_load_for_every_dtype_shape_and_order(values, fortran):
    if fortran:
        values = np.asfortranarray(values)
    array = Array(values)
    view = npy_view(array.data)
    loaded = array.numpy()
    assert view.dtype == loaded.dtype and view.shape == loaded.shape
    assert view.tobytes(order="A") == loaded.tobytes(order="A")
    assert not view.flags.writeable


def test_a_version_2_header_is_read_too():
    values = np.arange(12, dtype=np.int16).reshape(3, 4)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, values, version=(2, 0))
    assert np.array_equal(npy_view(buffer.getvalue()), values)


def npy_with_header(header: str) -> bytes:
    text = header.encode("latin1")
    padding = 64 - (10 + len(text) + 1) % 64
    text += b" " * padding + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize("data, message", [
    (b"", "expected a .npy image"),
    (b"PK\x03\x04 not an npy file", "expected a .npy image"),
    (b"\x93NUMPY\x03\x00" + bytes(20), "format 1.0 or 2.0, got 3.0"),
    (b"\x93NUMPY\x01\x05" + bytes(20), "format 1.0 or 2.0, got 1.5"),
    (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }") + bytes(16),
     "dimensions >= 0, got (-1,)"),
    (npy_with_header("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }") + bytes(16),
     "Python objects"),
    (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }") + bytes(12),
     "expected 16 bytes of float32 data for shape (4,), got 12"),
])
def test_malformed_images_are_refused_with_what_was_expected(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        npy_view(data)


def test_an_array_is_decoded_once_and_again_when_its_bytes_change():
    array = Array(np.arange(4, dtype=np.float32))
    first = array_values(array)
    assert array_values(array) is first
    array.data = Array(np.ones(4, dtype=np.float32)).data
    assert np.array_equal(array_values(array), np.ones(4))


def test_a_torch_state_dict_owns_writable_copies_equal_to_flowers():
    record = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
                          "n": Array(np.array(7, dtype=np.int64))})
    ours, flowers = torch_state_dict(record), record.to_torch_state_dict()
    assert list(ours) == list(flowers)
    for key in ours:
        assert torch.equal(ours[key], flowers[key]) and ours[key].dtype == flowers[key].dtype
    ours["w"] += 1  # writable, and the record's shared values are untouched
    assert np.array_equal(record_arrays(record)["w"], np.arange(6).reshape(2, 3))
