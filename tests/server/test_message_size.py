import contextlib

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message import array as flower_array
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmosaic.server.message_size import message_bytes

DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.float16])
NAMES = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                min_size=1, max_size=6)


def flower_size(message):
    """What Flower itself ships: every distinct object, deflated, named by its hash."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def metadata(**changes):
    values = dict(run_id=1, message_id="m", src_node_id=3, dst_node_id=0,
                  reply_to_message_id="i", group_id="1", created_at=0.5, ttl=60.0,
                  message_type="train")
    return Metadata(**{**values, **changes})


arrays = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))


@st.composite
def array_records(draw):
    pool = draw(st.lists(arrays, min_size=1, max_size=4))
    names = draw(st.lists(NAMES, min_size=0, max_size=6, unique=True))
    # arrays drawn from a small pool, so equal arrays (equal ids in Flower) recur
    return ArrayRecord({name: Array(pool[draw(st.integers(0, len(pool) - 1))])
                        for name in names})


@st.composite
def leaf_records(draw):
    values = draw(st.dictionaries(NAMES, st.one_of(st.integers(-5, 5), st.floats(-1, 1)),
                                  max_size=3))
    kind = draw(st.sampled_from([MetricRecord, ConfigRecord]))
    return kind(values)


@st.composite
def messages(draw):
    shared = draw(array_records())
    records = draw(st.dictionaries(NAMES, st.one_of(
        array_records(), leaf_records(), st.just(shared)), max_size=4))
    if draw(st.booleans()):
        return Message(RecordDict(records), metadata=metadata(
            message_id=draw(st.text(max_size=5)), created_at=draw(st.floats(0, 1e9))))
    return Message(Error(code=draw(st.integers(0, 9)), reason=draw(st.text(max_size=9))),
                   metadata=metadata())


@settings(max_examples=200, deadline=None)
@given(message=messages())
def test_the_size_is_the_sum_of_flowers_deflated_objects(message):
    assert message_bytes(message) == flower_size(message)


@contextlib.contextmanager
def chunk_size(size):
    """Flower cuts arrays into chunks of ``size`` bytes (5 MiB by default)."""
    original = flower_array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    flower_array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE = size
    try:
        yield
    finally:
        flower_array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE = original


@settings(max_examples=60, deadline=None)
@given(message=messages(), chunk=st.integers(1, 40))
def test_arrays_cut_into_chunks_count_each_distinct_chunk_once(message, chunk):
    with chunk_size(chunk):
        assert message_bytes(message) == flower_size(message)


def test_a_model_sized_reply_matches_flower_and_repeated_chunks_count_once():
    record = ArrayRecord({f"layer{i}.weight": Array(np.full((64, 33), i % 3, np.float32))
                          for i in range(12)})
    message = Message(RecordDict({"arrays": record, "metrics": MetricRecord({"n": 3})}),
                      metadata=metadata())
    with chunk_size(4096):
        assert message_bytes(message) == flower_size(message)
        # 12 arrays of three distinct values: most chunks repeat and are shipped once
        assert message_bytes(message) < sum(len(a.data) for a in record.values()) / 2
