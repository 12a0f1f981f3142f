import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower
from flwr.serverapp.exception import InconsistentMessageReplies

from fedmosaic.config import RunConfig
from fedmosaic.strategies.fedavg import FedAvg, FedProx
from fedmosaic.strategies.registry import build_aggregator


def reply(node, weights, examples):
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                          "metrics": MetricRecord({"num-examples": examples, "loss": node / 10})})
    return Message(content, metadata=Metadata(
        run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
        reply_to_message_id="i", group_id="1", created_at=0.0, ttl=60.0,
        message_type="train"))


@pytest.mark.parametrize("ours, theirs", [(FedAvg, flower.FedAvg), (FedProx, flower.FedProx)])
def test_the_mean_and_metrics_equal_flowers(ours, theirs):
    rng = np.random.default_rng(0)
    replies = [reply(node, {"a": rng.normal(size=(3, 4)).astype(np.float32),
                            "b": rng.normal(size=5).astype(np.float32)}, int(examples))
               for node, examples in enumerate(rng.integers(1, 50, size=7), start=1)]
    arrays, metrics = ours().aggregate_train(1, replies)
    expected_arrays, expected_metrics = theirs().aggregate_train(1, replies)
    for key in expected_arrays:
        np.testing.assert_allclose(arrays[key].numpy(), expected_arrays[key].numpy(),
                                   rtol=1e-6, atol=1e-6)
        assert arrays[key].numpy().dtype == np.float32
    assert dict(metrics) == pytest.approx(dict(expected_metrics))


def test_replies_that_flower_refuses_are_refused_the_same_way():
    mismatched = [reply(1, {"a": np.zeros(2, np.float32)}, 3),
                  Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}),
                          metadata=Metadata(run_id=1, message_id="m2", src_node_id=2,
                                            dst_node_id=0, reply_to_message_id="i",
                                            group_id="1", created_at=0.0, ttl=60.0,
                                            message_type="train"))]
    with pytest.raises(InconsistentMessageReplies):
        flower.FedAvg().aggregate_train(1, mismatched)
    with pytest.raises(InconsistentMessageReplies):
        FedAvg().aggregate_train(1, mismatched)
    assert FedAvg().aggregate_train(1, []) == (None, None)


def test_the_registry_builds_these_and_fedprox_still_sends_mu():
    config = RunConfig.from_mapping({"strategy": "fedprox", "proximal-mu": 0.5})
    strategy = build_aggregator(config)
    assert isinstance(strategy, FedProx)
    assert isinstance(build_aggregator(RunConfig.from_mapping({})), FedAvg)
    assert strategy.proximal_mu == 0.5


def test_integer_buffers_and_float64_arrays_are_averaged_by_flowers_own_code():
    replies = [reply(node, {"w": np.full(3, node, np.float32),
                            "steps": np.array(1000 + node, np.int64)}, node)
               for node in (1, 2, 3)]
    arrays, _ = FedAvg().aggregate_train(1, replies)
    expected, _ = flower.FedAvg().aggregate_train(1, replies)
    for key in expected:
        assert arrays[key].numpy().dtype == expected[key].numpy().dtype
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())
