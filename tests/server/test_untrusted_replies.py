"""Every byte from a device is untrusted: fuzzing the cloud's validation, the edge's intake and
the wire decoder with malformed updates beside one honest update of the same round.

``FEDMOSAIC_FUZZ_EXAMPLES`` sets the examples per property (60 in CI).
"""

import math
import os
import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmosaic import records
from fedmosaic.compression import (
    CompressionSpec,
    WireFormatError,
    compress,
    decode,
    payload_from_record,
    payload_to_record,
)
from fedmosaic.compression.wire import EncodedTensor, ValueMode, encode
from fedmosaic.config import RunConfig
from fedmosaic.server.edge.aggregation import EdgeAggregator
from fedmosaic.server.edge.messages import receive_device_replies
from fedmosaic.server.validation import ReplyContract, ValidatingStrategy, validate_update

FLAT = RunConfig.from_mapping({"num-clients": 4, "max-examples": 1000})
EDGES = RunConfig.from_mapping({"num-clients": 4, "num-edges": 2, "max-examples": 1000})
MODEL = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
HONEST_DELTA = {"w": np.full((2, 3), 0.25, np.float32), "b": np.full(3, -0.5, np.float32)}
HONEST_METRICS = {records.NUM_EXAMPLES: 10, records.TRAIN_LOSS: 0.5,
                  records.EMBEDDING_VARIANCE: 0.1, records.DATASET_SIZE: 10,
                  records.MODALITIES_HELD: [1, 0], records.CPU_LOAD: 0.25,
                  records.MEMORY_LOAD: 0.5}
LOSSLESS = CompressionSpec()
FUZZ = settings(max_examples=int(os.environ.get("FEDMOSAIC_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

INVALID_VALUES = {
    records.NUM_EXAMPLES: [0, -1, 1001, 10**18, 2.5, math.nan, math.inf, [10]],
    records.TRAIN_LOSS: [math.nan, math.inf, -1.0, [0.5]],
    records.EMBEDDING_VARIANCE: [-0.1, math.nan, -math.inf],
    records.DATASET_SIZE: [0, 10**18, 2.5, math.nan, [10]],
    records.MODALITIES_HELD: [[1], [1, 2], [0.5, 1.0], [], 1],
    records.CPU_LOAD: [-0.1, 1.5, math.nan, [0.5]],
    records.MEMORY_LOAD: [-0.5, 2.0, math.inf],
    records.EDGE_ID: [2, -1, 0.5, math.inf, [0], 10**18],
}


def reply(content, node):
    metadata = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id=f"i{node}", group_id="1", created_at=0.0,
                        ttl=60.0, message_type="train")
    return Message(content=content, metadata=metadata)


def weights(arrays):
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


@st.composite
def bad_metrics(draw, keys):
    """Metrics that break the contract: a required key missing, an unknown key, or a value
    outside its rule."""
    metrics = dict(HONEST_METRICS) | ({records.EDGE_ID: 0} if records.EDGE_ID in keys else {})
    kind = draw(st.sampled_from(["missing", "unknown", "value"]))
    if kind == "missing":
        del metrics[draw(st.sampled_from(sorted(keys)))]
    elif kind == "unknown":
        metrics[draw(st.sampled_from(["injected", "x", "num_examples", "dp-refused"]))] = 1.0
    else:
        key = draw(st.sampled_from(sorted(keys)))
        metrics[key] = draw(st.sampled_from(INVALID_VALUES[key]))
    return metrics


@st.composite
def bad_flat_content(draw):
    """A cloud-bound reply that must be rejected: bad metrics, bad arrays or bad records."""
    honest = {k: MODEL[k] + HONEST_DELTA[k] for k in MODEL}
    kind = draw(st.sampled_from(["metrics", "dtype", "shape", "missing", "extra", "non-finite",
                                 "records"]))
    arrays, metrics = dict(honest), dict(HONEST_METRICS)
    if kind == "metrics":
        metrics = draw(bad_metrics(set(HONEST_METRICS)))
    elif kind == "dtype":
        arrays["w"] = arrays["w"].astype(np.float64)
    elif kind == "shape":
        arrays["b"] = np.zeros(draw(st.integers(0, 5).filter(lambda n: n != 3)), np.float32)
    elif kind == "missing":
        del arrays[draw(st.sampled_from(["w", "b"]))]
    elif kind == "extra":
        arrays["bias2"] = np.zeros(1, np.float32)
    elif kind == "non-finite":
        arrays["w"] = arrays["w"].copy()
        arrays["w"][0, draw(st.integers(0, 2))] = draw(st.sampled_from([math.nan, math.inf]))
    if kind == "records":
        extra = draw(st.sampled_from(["array", "metric", "none"]))
        content = RecordDict({records.METRICS: MetricRecord(metrics)} if extra == "none" else {
            records.ARRAYS: weights(arrays), records.METRICS: MetricRecord(metrics),
            ("more" if extra == "array" else "more-metrics"):
                weights(arrays) if extra == "array" else MetricRecord(metrics)})
        return content
    return RecordDict({records.ARRAYS: weights(arrays), records.METRICS: MetricRecord(metrics)})


@FUZZ
@given(malformed=st.lists(bad_flat_content(), min_size=1, max_size=6),
       position=st.integers(0, 6))
def test_the_cloud_aggregates_exactly_the_honest_update_whatever_else_arrives(malformed,
                                                                              position):
    strategy = ValidatingStrategy(FedAvg(), contract=ReplyContract.for_devices(FLAT, 2))
    strategy._reference = {1: MODEL}
    honest = RecordDict({records.ARRAYS: weights({k: MODEL[k] + HONEST_DELTA[k] for k in MODEL}),
                         records.METRICS: MetricRecord(HONEST_METRICS)})
    contents = list(malformed)
    contents.insert(min(position, len(contents)), honest)
    replies = [reply(content, node) for node, content in enumerate(contents, start=1)]

    arrays, metrics = strategy.aggregate_train(1, replies)  # nothing may raise

    for name in MODEL:
        np.testing.assert_array_equal(arrays[name].numpy(), MODEL[name] + HONEST_DELTA[name])
    assert metrics[records.TRAIN_LOSS] == 0.5
    assert strategy.rejections.count(1) == len(malformed)


def honest_payload():
    return compress(HONEST_DELTA, LOSSLESS, None, np.random.default_rng(0))[0]


@st.composite
def bad_payload(draw):
    """Payload bytes an edge must reject: corrupted, truncated, random, a memory bomb, or a
    well-formed payload of the wrong layout."""
    good = honest_payload()
    kind = draw(st.sampled_from(["flip", "truncate", "random", "bomb", "dtype", "shape"]))
    if kind == "flip":
        data = bytearray(good)
        index = draw(st.integers(0, len(data) - 1))
        data[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "truncate":
        return good[:draw(st.integers(0, len(good) - 1))]
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "bomb":
        return bomb(draw(st.integers(1, 10)))
    if kind == "dtype":
        return compress({k: v.astype(np.float64) for k, v in HONEST_DELTA.items()}, LOSSLESS,
                        None, np.random.default_rng(0))[0]
    return compress({"w": np.zeros((3, 2), np.float32), "b": HONEST_DELTA["b"]}, LOSSLESS, None,
                    np.random.default_rng(0))[0]


def bomb(count=1):
    """A payload of a few bytes declaring ``count`` 2^14 x 2^14 float64 tensors, none kept."""
    empty = np.zeros(0, np.int64)
    return encode([EncodedTensor(f"t{i}", np.dtype("<f8"), (1 << 14, 1 << 14),
                                 ValueMode.FLOAT32, empty, np.zeros(0, np.float32))
                   for i in range(count)])


@st.composite
def bad_device_content(draw):
    """A device reply below an edge that the edge must reject."""
    device_keys = set(HONEST_METRICS) | {records.EDGE_ID}
    metrics = dict(HONEST_METRICS) | {records.EDGE_ID: 0}
    payload_record = payload_to_record(honest_payload())
    kind = draw(st.sampled_from(["metrics", "payload", "not-a-payload", "records"]))
    if kind == "metrics":
        metrics = draw(bad_metrics(device_keys))
    elif kind == "payload":
        payload_record = payload_to_record(draw(bad_payload()))
    elif kind == "not-a-payload":
        payload_record = weights(HONEST_DELTA)
    if kind == "records":
        return RecordDict({records.METRICS: MetricRecord(metrics)})
    return RecordDict({records.COMPRESSED_DELTA: payload_record,
                       records.METRICS: MetricRecord(metrics)})


@FUZZ
@given(malformed=st.lists(bad_device_content(), min_size=1, max_size=6),
       position=st.integers(0, 6))
def test_an_edge_averages_exactly_the_honest_update_whatever_else_arrives(malformed, position):
    honest = RecordDict({records.COMPRESSED_DELTA: payload_to_record(honest_payload()),
                         records.METRICS: MetricRecord(HONEST_METRICS | {records.EDGE_ID: 0})})
    contents = list(malformed)
    contents.insert(min(position, len(contents)), honest)
    replies = [reply(content, node) for node, content in enumerate(contents, start=1)]
    edge = EdgeAggregator(0, LOSSLESS, validate_update)

    received = receive_device_replies(replies, ReplyContract.for_devices(EDGES, 2, True), 1)
    aggregate = edge.aggregate(received.by_edge.get(0, []), MODEL, 1)

    assert aggregate is not None and aggregate.accepted == 1 and aggregate.num_examples == 10
    sent = decode(aggregate.payload)
    for name in MODEL:
        np.testing.assert_array_equal(sent[name], HONEST_DELTA[name])
    assert set(received.by_edge) == {0}
    assert sum(received.rejected.values()) + edge.rejections.count(1) == len(malformed)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=4096), bad_payload()))
def test_the_decoder_raises_only_wire_format_errors_and_allocates_little(payload):
    tracemalloc.start()
    try:
        decode(payload, expected=MODEL)
    except WireFormatError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    assert peak < 1 << 20  # 1 MiB, whatever the payload declares


@pytest.mark.parametrize("count", [1, 10])
def test_a_decompression_bomb_is_refused_before_any_allocation(count):
    payload = bomb(count)  # each tensor would take 2 GiB
    tracemalloc.start()
    with pytest.raises(WireFormatError, match=r"declares \d+ bytes of arrays, at most"):
        decode(payload)
    with pytest.raises(WireFormatError, match="expected the 2 arrays of the model"):
        decode(payload, expected=MODEL)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert len(payload) < 100 * count and peak < 1 << 20


def test_the_edge_cases_found_by_hand_are_rejected_and_the_honest_device_kept():
    contract = ReplyContract.for_devices(EDGES, 2, below_edge=True)
    payload = payload_to_record(honest_payload())
    cases = [HONEST_METRICS | {records.EDGE_ID: 0, records.NUM_EXAMPLES: math.inf},
             HONEST_METRICS | {records.EDGE_ID: [0]},
             HONEST_METRICS | {records.EDGE_ID: 0, records.NUM_EXAMPLES: 10**18},
             HONEST_METRICS | {records.EDGE_ID: 0, records.TRAIN_LOSS: math.nan}]
    honest = HONEST_METRICS | {records.EDGE_ID: 1}
    replies = [reply(RecordDict({records.COMPRESSED_DELTA: payload,
                                 records.METRICS: MetricRecord(m)}), node)
               for node, m in enumerate([*cases, honest], start=1)]

    received = receive_device_replies(replies, contract, 1)

    assert dict(received.rejected) == {"metrics": 2, "num-examples": 2}
    assert [u.device for u in received.by_edge[1]] == ["5"] and 0 not in received.by_edge
    assert payload_from_record(payload) == received.by_edge[1][0].payload


EVALUATION = {records.NUM_EXAMPLES: 8, records.EVAL_LOSS: 0.7, records.EVAL_ACCURACY: 0.75}


@pytest.mark.parametrize("bad", [
    RecordDict({records.METRICS: MetricRecord(EVALUATION | {"injected": 1.0})}),
    RecordDict({}),
    RecordDict({records.METRICS: MetricRecord(EVALUATION | {records.NUM_EXAMPLES: -8})}),
    RecordDict({records.METRICS: MetricRecord(EVALUATION | {records.EVAL_ACCURACY: 7.0})}),
    RecordDict({records.METRICS: MetricRecord(EVALUATION),
                "more": MetricRecord(EVALUATION)}),
    RecordDict({records.METRICS: MetricRecord(EVALUATION), records.ARRAYS: weights(MODEL)}),
])
def test_a_malformed_evaluation_is_dropped_and_the_honest_ones_aggregated(bad):
    strategy = ValidatingStrategy(FedAvg(), evaluate_contract=ReplyContract.for_evaluation(FLAT))
    honest = [reply(RecordDict({records.METRICS: MetricRecord(EVALUATION)}), node)
              for node in (1, 2)]

    metrics = strategy.aggregate_evaluate(1, [honest[0], reply(bad, 3), honest[1]])

    assert metrics[records.EVAL_ACCURACY] == pytest.approx(0.75)
    assert strategy.evaluate_rejections.count(1) == 1


def removal(samples, accuracy_with, accuracy_without):
    keys = records.eval_without("camera")
    return dict(zip(keys, (samples, accuracy_with, accuracy_without), strict=True))


def test_devices_missing_modality_figures_average_the_accepted_evaluations_only():
    strategy = ValidatingStrategy(
        FedAvg(), evaluate_contract=ReplyContract.for_evaluation(FLAT, ["camera"]))
    replies = [reply(RecordDict({records.METRICS: MetricRecord(EVALUATION | figures)}), node)
               for node, figures in enumerate([removal(8, 1.0, 0.5), removal(4, 0.25, 0.25),
                                               removal(9, 0.0, 0.0), removal(0, 0.0, 0.0)],
                                              start=1)]

    metrics = strategy.aggregate_evaluate(1, replies)

    means = strategy.device_missing_modality[1]["camera"]  # the third claims 9 of 8 samples
    assert strategy.evaluate_rejections.count(1) == 1
    assert (means.samples, means.accuracy_with, means.accuracy_without) == (12, 0.625, 0.375)
    assert set(metrics) == set(EVALUATION) - {records.NUM_EXAMPLES}  # not averaged by Flower


@pytest.mark.parametrize("bad", [removal(-1, 0.5, 0.5), removal(2.5, 0.5, 0.5),
                                 removal(4, 1.5, 0.5), removal(4, 0.5, float("nan"))])
def test_a_malformed_removal_figure_rejects_the_evaluation(bad):
    strategy = ValidatingStrategy(
        FedAvg(), evaluate_contract=ReplyContract.for_evaluation(FLAT, ["camera"]))
    honest = reply(RecordDict({records.METRICS: MetricRecord(EVALUATION | removal(8, 1, 0))}), 1)

    strategy.aggregate_evaluate(1, [honest, reply(RecordDict(
        {records.METRICS: MetricRecord(EVALUATION | bad)}), 2)])

    assert strategy.evaluate_rejections.reasons(1) == {"metrics": 1}
    assert strategy.device_missing_modality[1]["camera"].samples == 8


def test_an_evaluation_without_the_removal_figures_is_rejected():
    strategy = ValidatingStrategy(
        FedAvg(), evaluate_contract=ReplyContract.for_evaluation(FLAT, ["camera"]))
    honest = reply(RecordDict({records.METRICS: MetricRecord(EVALUATION | removal(8, 1, 0))}), 1)
    bare = reply(RecordDict({records.METRICS: MetricRecord(EVALUATION)}), 2)

    strategy.aggregate_evaluate(1, [honest, bare])

    assert strategy.evaluate_rejections.reasons(1) == {"metrics": 1}
    assert strategy.device_missing_modality[1]["camera"].samples == 8


def test_a_huge_finite_loss_is_rejected_before_it_overflows_an_edges_mean():
    contract = ReplyContract.for_devices(EDGES, 2, below_edge=True)
    huge = HONEST_METRICS | {records.EDGE_ID: 0, records.TRAIN_LOSS: 1.7e308}
    replies = [reply(RecordDict({records.COMPRESSED_DELTA: payload_to_record(honest_payload()),
                                 records.METRICS: MetricRecord(m)}), node)
               for node, m in enumerate([huge, HONEST_METRICS | {records.EDGE_ID: 0}], start=1)]

    received = receive_device_replies(replies, contract, 1)

    assert dict(received.rejected) == {"metrics": 1} and len(received.by_edge[0]) == 1


def test_a_large_payload_for_another_model_is_refused_before_its_entries_are_read():
    positions = np.arange(0, 1 << 22, 2, dtype=np.int64)  # a bitmap of 2^22 bits, half set
    payload = encode([EncodedTensor("bogus", np.dtype("<f4"), (1 << 22,), ValueMode.FLOAT32,
                                    positions, np.ones(positions.size, np.float32)),
                      EncodedTensor("b", np.dtype("<f4"), (3,), ValueMode.FLOAT32, None,
                                    np.zeros(3, np.float32))])
    tracemalloc.start()

    with pytest.raises(WireFormatError, match="expected 'w'"):
        decode(payload, expected=MODEL)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert len(payload) > 8 << 20 and peak < 1 << 20


def test_an_edge_bounds_a_device_by_the_dataset_size_it_declared_first():
    contract = ReplyContract.for_devices(EDGES, 2, below_edge=True)
    payload = payload_to_record(honest_payload())
    declared = {}

    def one_round(num_examples, size):
        metrics = HONEST_METRICS | {records.EDGE_ID: 0, records.NUM_EXAMPLES: num_examples,
                                    records.DATASET_SIZE: size}
        replies = [reply(RecordDict({records.COMPRESSED_DELTA: payload,
                                     records.METRICS: MetricRecord(metrics)}), 7)]
        return receive_device_replies(replies, contract, 1, declared)

    first, inflated = one_round(10, 10), one_round(900, 900)

    assert len(first.by_edge[0]) == 1 and declared == {7: 10}
    assert dict(inflated.rejected) == {"num-examples": 1}
