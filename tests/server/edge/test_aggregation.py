import numpy as np
import pytest

from fedmosaic.compression import CompressionSpec, compress, decode
from fedmosaic.server.edge.aggregation import (
    DeviceUpdate,
    EdgeAggregator,
    weighted_average,
    weighted_metrics,
)
from fedmosaic.server.validation import validate_update

LOSSLESS = CompressionSpec(topk_ratio=1.0, bits=32)
GLOBAL = {"w": np.array([1.0, 1.0], dtype=np.float32), "b": np.zeros(1, dtype=np.float32)}


def payload(delta, spec=LOSSLESS):
    return compress(delta, spec, None, np.random.default_rng(0))[0]


def device(name, delta, num_examples, **metrics):
    return DeviceUpdate(name, payload(delta), num_examples, metrics)


def test_weighted_average_weights_by_examples():
    deltas = [{"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([4.0, 8.0], np.float32)}]

    average = weighted_average(deltas, [1, 2])

    # (1*1 + 2*4) / 3 = 3, (1*2 + 2*8) / 3 = 6
    np.testing.assert_allclose(average["w"], [3.0, 6.0])
    assert average["w"].dtype == np.float32


@pytest.mark.parametrize(("deltas", "weights", "message"), [
    ([], [], "at least one delta"),
    ([{"w": np.zeros(1)}], [1, 2], "one weight per delta"),
    ([{"w": np.zeros(1)}], [0], "weights must be > 0"),
    ([{"w": np.zeros(1)}, {"v": np.zeros(1)}], [1, 1], "must hold the arrays"),
])
def test_weighted_average_rejects_bad_input(deltas, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_average(deltas, weights)


def test_weighted_metrics_average_shared_keys_by_examples():
    updates = [DeviceUpdate("a", b"", 1, {"loss": 1.0, "only-a": 5.0}),
               DeviceUpdate("b", b"", 2, {"loss": 4.0})]

    # (1*1 + 2*4) / 3 = 3; "only-a" is not reported by every device
    assert weighted_metrics(updates) == {"loss": 3.0}


def test_lossless_edge_sends_the_weighted_average_delta():
    edge = EdgeAggregator(0, LOSSLESS, validate_update)
    updates = [
        device("a", {"w": np.array([1.0, 2.0], np.float32), "b": np.array([3.0], np.float32)}, 1,
               loss=1.0),
        device("b", {"w": np.array([4.0, 8.0], np.float32), "b": np.array([0.0], np.float32)}, 2,
               loss=4.0),
    ]

    aggregate = edge.aggregate(updates, GLOBAL, server_round=1)

    sent = decode(aggregate.payload)
    np.testing.assert_allclose(sent["w"], [3.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(sent["b"], [1.0], rtol=1e-6)  # (1*3 + 2*0) / 3
    assert (aggregate.num_examples, aggregate.accepted, aggregate.rejected) == (3, 2, 0)
    assert aggregate.metrics == {"loss": 3.0}


def test_bad_updates_are_rejected_and_the_rest_is_averaged():
    good = {"w": np.array([2.0, -2.0], np.float32), "b": np.array([1.0], np.float32)}
    nan = {"w": np.array([np.nan, 0.0], np.float32), "b": np.array([0.0], np.float32)}
    wrong_shape = {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}
    edge = EdgeAggregator(0, LOSSLESS, validate_update)
    updates = [
        device("good", good, 4),
        DeviceUpdate("truncated", payload(good)[:-5], 4),
        DeviceUpdate("garbage", b"not a payload", 4),
        device("nan", nan, 4),
        device("wrong-shape", wrong_shape, 4),
        device("no-examples", good, 0),
    ]

    aggregate = edge.aggregate(updates, GLOBAL, server_round=1)

    assert (aggregate.accepted, aggregate.rejected, aggregate.num_examples) == (1, 5, 4)
    sent = decode(aggregate.payload)
    np.testing.assert_allclose(sent["w"], good["w"])
    np.testing.assert_allclose(sent["b"], good["b"])


def test_an_edge_with_no_acceptable_update_sends_nothing():
    edge = EdgeAggregator(0, LOSSLESS, validate_update)

    assert edge.aggregate([DeviceUpdate("x", b"\x00" * 8, 1)], GLOBAL, server_round=1) is None


def test_the_edge_residual_returns_what_top_k_dropped_in_the_next_round():
    reference = {"w": np.zeros(4, np.float32)}
    delta = {"w": np.array([4.0, -3.0, 2.0, 1.0], np.float32)}
    zero = {"w": np.zeros(4, np.float32)}
    edge = EdgeAggregator(0, CompressionSpec(topk_ratio=0.5, bits=32), validate_update)

    first = decode(edge.aggregate([device("a", delta, 1)], reference, 1).payload)
    second = decode(edge.aggregate([device("a", zero, 1)], reference, 2).payload)

    # k = ceil(0.5 * 4) = 2: round 1 sends the two largest magnitudes, round 2 the rest
    np.testing.assert_allclose(first["w"], [4.0, -3.0, 0.0, 0.0])
    np.testing.assert_allclose(second["w"], [0.0, 0.0, 2.0, 1.0])
