import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.traffic import MeteredStrategy, RoundTraffic


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def train_message(num_floats, reply_to=None):
    content = RecordDict({"arrays": ArrayRecord([np.zeros(num_floats, dtype=np.float32)]),
                          "metrics": MetricRecord({"num-examples": 4})})
    if reply_to is not None:
        return Message(content=content, reply_to=reply_to)
    return Message(content=content, dst_node_id=7, message_type="train")


def test_message_bytes_grow_by_exactly_the_added_array_bytes():
    small, large = message_bytes(train_message(1000)), message_bytes(train_message(3000))

    # exactly the 2,000 extra float32 values, plus a few bytes of varint length headers
    assert 2000 * 4 <= large - small <= 2000 * 4 + 8
    assert small > 1000 * 4


def test_round_traffic_counts_both_directions():
    out = [train_message(100), train_message(100)]
    replies = [train_message(50, reply_to=out[0])]
    traffic = RoundTraffic()

    traffic.add_down(out)
    traffic.add_up(replies)

    assert traffic.bytes_down == sum(message_bytes(m) for m in out)
    assert traffic.bytes_up == message_bytes(replies[0])
    assert (traffic.messages_down, traffic.replies_up, traffic.failed_replies) == (2, 1, 0)


def test_metered_strategy_aggregates_like_the_wrapped_strategy():
    sent = [train_message(4), train_message(4)]
    replies = []
    for message, value in zip(sent, (1.0, 3.0), strict=True):
        content = RecordDict({"arrays": ArrayRecord([np.full(4, value, dtype=np.float32)]),
                              "metrics": MetricRecord({"num-examples": 2, "train-loss": value})})
        replies.append(Message(content=content, reply_to=message))
    metered = MeteredStrategy(FedAvg())

    arrays, metrics = metered.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], np.full(4, 2.0))
    assert metrics["train-loss"] == pytest.approx(2.0)
    assert metered.train_metrics[1] is metrics
    assert metered.rounds[1].bytes_up == sum(message_bytes(r) for r in replies)
