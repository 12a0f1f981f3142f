"""Node loss: bounded sampling, error replies attributed to their node, missing replies filled."""

import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic.server.node_loss import TIMEOUT_CODE, NodeLossStage, NoNodesError, innermost
from fedmosaic.server.traffic import MeteredStrategy

SUPERLINK = 999


class Nodes:
    """A grid whose online nodes change as the fake clock advances."""

    def __init__(self, clock, online, later=None, at=None):
        self.clock, self.online, self.later, self.at = clock, online, later, at

    def get_node_ids(self):
        if self.later is not None and self.clock() >= self.at:
            return list(self.later)
        return list(self.online)


def stage(clock, node_wait=30.0, round_timeout=100.0):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK
    aggregator = FedAvg(fraction_train=1.0, min_train_nodes=5, min_available_nodes=5,
                        fraction_evaluate=1.0, min_evaluate_nodes=5)
    return NodeLossStage(MeteredStrategy(aggregator), node_wait=node_wait,
                         round_timeout=round_timeout, clock=clock, sleep=clock.sleep)


def arrays():
    return ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})


def push(messages):
    """What Flower's grid does on push: give every message its id."""
    for message in messages:
        message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return messages


def reply(to, value):
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.full(3, value, np.float32))}),
                          "metrics": MetricRecord({"num-examples": 10})})
    return Message(content, reply_to=to)


def test_a_round_with_lost_nodes_samples_those_online_after_node_wait_then_asks_for_all_again(
        fake_clock):
    clock = fake_clock
    chain = stage(clock)
    grid = Nodes(clock, online=[1, 2, 3])

    sent = push(list(chain.configure_train(2, arrays(), ConfigRecord(), grid)))

    assert sorted(m.metadata.dst_node_id for m in sent) == [1, 2, 3]
    assert clock.now == pytest.approx(30.0)  # waited node-wait, not forever
    assert chain.short_rounds == {2: (3, 5)}
    aggregator = innermost(chain)
    assert (aggregator.min_available_nodes, aggregator.min_train_nodes) == (5, 5)  # restored
    evaluated = list(chain.configure_evaluate(2, arrays(), ConfigRecord(), grid))
    assert len(evaluated) == 3 and clock.now == pytest.approx(30.0)  # no second wait

    rejoined = Nodes(clock, online=[1, 2, 3, 4, 5])
    assert len(list(chain.configure_train(3, arrays(), ConfigRecord(), rejoined))) == 5
    assert 3 not in chain.short_rounds


def test_round_one_waits_round_timeout_for_devices_still_connecting(fake_clock):
    clock = fake_clock
    chain = stage(clock)
    grid = Nodes(clock, online=[1, 2], later=[1, 2, 3, 4, 5], at=70.0)

    sent = list(chain.configure_train(1, arrays(), ConfigRecord(), grid))

    assert len(sent) == 5 and clock.now == pytest.approx(70.0)
    assert chain.short_rounds == {}


def test_no_node_online_for_a_whole_round_timeout_ends_the_run_with_a_clear_error(fake_clock):
    clock = fake_clock
    chain = stage(clock)

    with pytest.raises(NoNodesError, match="round 4: no node came online within "
                                           "round-timeout=100 s"):
        chain.configure_train(4, arrays(), ConfigRecord(), Nodes(clock, online=[]))
    assert clock.now == pytest.approx(100.0)


def test_error_replies_are_charged_to_the_node_that_failed_and_silence_becomes_a_timeout(
        fake_clock):
    clock = fake_clock
    chain = stage(clock)
    sent = push(list(chain.configure_train(1, arrays(), ConfigRecord(),
                                           Nodes(clock, online=[1, 2, 3, 4, 5]))))
    by_node = {m.metadata.dst_node_id: m for m in sent}
    dead = Message(Error(0, "NODE_UNAVAILABLE"), reply_to=by_node[4])
    dead.metadata.__dict__["_src_node_id"] = SUPERLINK  # as Flower's SuperLink answers
    seen = []
    aggregator = innermost(chain)
    original = aggregator.aggregate_train

    def spy(server_round, replies):
        seen.extend(replies)
        return original(server_round, replies)

    aggregator.aggregate_train = spy
    replies = [reply(by_node[1], 1.0), reply(by_node[2], 2.0), reply(by_node[3], 3.0), dead]

    aggregated, _ = chain.aggregate_train(1, replies)

    assert dead.metadata.src_node_id == SUPERLINK
    errors = {r.metadata.src_node_id: r.error for r in seen if r.has_error()}
    assert set(errors) == {4, 5}  # the dead node, and the one that never answered
    assert errors[4].reason == "NODE_UNAVAILABLE"
    assert errors[5].code == TIMEOUT_CODE and "timeout" in errors[5].reason
    assert chain.timeouts[1] == 1
    assert chain.strategy.rounds[1].failed_replies == 2
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full(3, 2.0))


def test_a_grid_that_names_no_message_gets_its_replies_through_unchanged(fake_clock):
    clock = fake_clock
    chain = stage(clock)
    sent = list(chain.configure_train(1, arrays(), ConfigRecord(),
                                      Nodes(clock, online=[1, 2, 3, 4, 5])))
    replies = [reply(message, 1.0) for message in sent[:4]]  # ids were never set

    chain.aggregate_train(1, replies)

    assert chain.timeouts[1] == 0
    assert chain.strategy.rounds[1].replies_up == 4 and chain.strategy.rounds[1].failed_replies == 0


class Leaving:
    """Five nodes when first asked; one has left by the next question."""

    def __init__(self):
        self.asked = 0

    def get_node_ids(self):
        self.asked += 1
        return [1, 2, 3, 4, 5] if self.asked == 1 else [1, 2, 3, 4]


def test_a_node_leaving_between_the_count_and_the_sample_cannot_stall_flowers_sampling(fake_clock):
    clock = fake_clock
    chain = stage(clock)
    grid = Leaving()

    sent = list(chain.configure_train(2, arrays(), ConfigRecord(), grid))

    # Flower's sample_nodes would loop forever on 4 < 5; it sampled the snapshot instead
    assert sorted(m.metadata.dst_node_id for m in sent) == [1, 2, 3, 4, 5]
    assert grid.asked == 1 and clock.now == 0.0


def test_evaluation_that_is_off_waits_for_no_node(fake_clock):
    clock = fake_clock
    chain = stage(clock)
    innermost(chain).fraction_evaluate = 0.0

    assert list(chain.configure_evaluate(3, arrays(), ConfigRecord(),
                                         Nodes(clock, online=[]))) == []
    assert clock.now == 0.0
