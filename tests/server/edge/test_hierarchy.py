import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.compression import (
    CompressionSpec,
    arrays_of,
    arrays_record,
    compress,
    payload_to_record,
)
from fedmosaic.config import RunConfig
from fedmosaic.server.edge.aggregation import DeviceUpdate, EdgeAggregate, EdgeAggregator
from fedmosaic.server.edge.hierarchy import HierarchicalStrategy
from fedmosaic.server.edge.messages import edge_aggregate_content
from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.validation import ReplyContract
from fedmosaic.simulation.inprocess import run_in_process

LOSSLESS = CompressionSpec()
CONTRACT = ReplyContract.for_devices(RunConfig.from_mapping({"num-clients": 4, "num-edges": 2}),
                                     num_modalities=1, below_edge=True)
GLOBAL = {"w": np.array([1.0, -1.0, 0.5], np.float32)}


class Recording(Strategy):
    """A cloud strategy that keeps the replies it is asked to aggregate."""

    def __init__(self):
        self.replies = []

    def configure_train(self, server_round, arrays, config, grid):
        return []

    def aggregate_train(self, server_round, replies):
        self.replies = list(replies)
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self):
        pass


def accept_all(update, reference, num_examples):
    pass


def lossless_edges(count):
    return [EdgeAggregator(e, LOSSLESS, accept_all) for e in range(count)]


def reply(delta, num_examples, edge_id):
    payload, _ = compress(delta, LOSSLESS, None, np.random.default_rng(0))
    content = RecordDict({
        records.COMPRESSED_DELTA: payload_to_record(payload),
        records.METRICS: MetricRecord({records.NUM_EXAMPLES: num_examples, records.EDGE_ID: edge_id,
                                       records.TRAIN_LOSS: float(num_examples),
                                       records.EMBEDDING_VARIANCE: 1.0,
                                       records.DATASET_SIZE: num_examples,
                                       records.MODALITIES_HELD: [1],
                                       records.CPU_LOAD: 0.5, records.MEMORY_LOAD: 0.5}),
    })
    return as_reply(content)


NODES = itertools.count(7)


def as_reply(content):
    metadata = Metadata(run_id=1, message_id="m", src_node_id=next(NODES), dst_node_id=0,
                        reply_to_message_id="i", group_id="1", created_at=0.0, ttl=60.0,
                        message_type="train")
    return Message(content=content, metadata=metadata)


def run_round(strategy, replies):
    strategy.configure_train(1, arrays_record(GLOBAL), ConfigRecord(), grid=None)
    return strategy.aggregate_train(1, replies)


def test_the_cloud_strategy_sees_one_reply_per_edge_with_the_edge_weights():
    cloud = Recording()
    hierarchy = HierarchicalStrategy(cloud, lossless_edges(2), CONTRACT)
    replies = [reply({"w": np.array([1.0, 0.0, 0.0], np.float32)}, 1, 0),
               reply({"w": np.array([4.0, 0.0, 0.0], np.float32)}, 3, 0),
               reply({"w": np.array([0.0, 2.0, 0.0], np.float32)}, 2, 1)]

    run_round(hierarchy, replies)

    assert len(cloud.replies) == 2
    edge0, edge1 = (r.content for r in cloud.replies)
    # edge 0: w_global + (1*1 + 3*4) / 4 = 1 + 3.25 on the first entry
    np.testing.assert_allclose(arrays_of(edge0[records.ARRAYS])["w"], [4.25, -1.0, 0.5])
    np.testing.assert_allclose(arrays_of(edge1[records.ARRAYS])["w"], [1.0, 1.0, 0.5])
    assert edge0[records.METRICS][records.NUM_EXAMPLES] == 4
    assert edge0[records.METRICS][records.TRAIN_LOSS] == pytest.approx((1 * 1 + 3 * 3) / 4)
    assert edge1[records.METRICS][records.NUM_EXAMPLES] == 2


def test_bytes_are_counted_per_hop_from_the_serialized_messages():
    hierarchy = HierarchicalStrategy(Recording(), lossless_edges(1), CONTRACT)
    replies = [reply({"w": np.ones(3, np.float32)}, 1, 0), reply({"w": np.ones(3, np.float32)},
                                                                   1, 0)]

    run_round(hierarchy, replies)

    traffic = hierarchy.round_traffic(1)
    assert traffic["bytes_device_to_edge"] == sum(message_bytes(r) for r in replies)
    # one edge message, carrying the same kind of payload as one device reply
    assert 0 < traffic["bytes_edge_to_cloud"] < traffic["bytes_device_to_edge"]
    assert traffic["edge_rejected_updates"] == 0


def test_malformed_device_replies_are_rejected_and_counted():
    cloud = Recording()
    hierarchy = HierarchicalStrategy(cloud, lossless_edges(2), CONTRACT)
    good = reply({"w": np.ones(3, np.float32)}, 1, 1)
    no_payload = as_reply(RecordDict({records.METRICS: MetricRecord({records.NUM_EXAMPLES: 1,
                                                                      records.EDGE_ID: 0})}))
    no_edge = as_reply(RecordDict({
        records.COMPRESSED_DELTA: good.content[records.COMPRESSED_DELTA],
        records.METRICS: MetricRecord({records.NUM_EXAMPLES: 1})}))
    unknown_edge = reply({"w": np.ones(3, np.float32)}, 1, 5)

    run_round(hierarchy, [good, no_payload, no_edge, unknown_edge])

    assert len(cloud.replies) == 1
    assert hierarchy.hops[1].rejected_updates == 3
    assert hierarchy.hops[1].accepted_updates == 1


def test_replies_of_deployed_edges_are_taken_as_sent():
    cloud = Recording()
    hierarchy = HierarchicalStrategy(cloud, lossless_edges(2), CONTRACT, deployed=True)
    payload, _ = compress({"w": np.array([2.0, 0.0, 0.0], np.float32)}, LOSSLESS, None,
                          np.random.default_rng(0))
    aggregate = EdgeAggregate(edge_id=1, payload=payload, num_examples=5,
                              metrics={records.TRAIN_LOSS: 0.5}, accepted=2, rejected=1)
    from_edge = as_reply(edge_aggregate_content(aggregate, bytes_device_to_edge=1234))

    run_round(hierarchy, [from_edge])

    (seen,) = cloud.replies
    np.testing.assert_allclose(arrays_of(seen.content[records.ARRAYS])["w"], [3.0, -1.0, 0.5])
    assert dict(seen.content[records.METRICS]) == {records.TRAIN_LOSS: 0.5,
                                                   records.NUM_EXAMPLES: 5}
    hops = hierarchy.hops[1]
    assert (hops.bytes_device_to_edge, hops.accepted_updates, hops.rejected_updates) == (
        1234, 2, 1)
    assert hops.bytes_edge_to_cloud == message_bytes(from_edge)


def test_a_stale_update_scales_its_floats_its_counters_follow_the_current_model():
    counted = {"w": np.array([1.0, -1.0, 0.5], np.float32), "steps": np.array([5], np.int64)}
    cloud = Recording()
    hierarchy = HierarchicalStrategy(cloud, lossless_edges(2), CONTRACT, deployed=True)
    replies = []
    for edge_id in (0, 1):
        payload, _ = compress({"w": np.array([2.0, 0.0, 0.0], np.float32),
                               "steps": np.array([3], np.int64)}, LOSSLESS, None,
                              np.random.default_rng(0))
        replies.append(as_reply(edge_aggregate_content(
            EdgeAggregate(edge_id, payload, 5, {}, 2, 0), 10)))
    hierarchy.staleness_weights[id(replies[1])] = 0.5

    hierarchy.configure_train(1, arrays_record(counted), ConfigRecord(), grid=None)
    hierarchy.aggregate_train(1, replies)

    fresh, stale = (arrays_of(r.content[records.ARRAYS]) for r in cloud.replies)
    np.testing.assert_allclose(fresh["w"], [3.0, -1.0, 0.5])
    np.testing.assert_allclose(stale["w"], [2.0, -1.0, 0.5])
    assert (fresh["steps"].tolist(), stale["steps"].tolist()) == ([8], [5])
    assert fresh["steps"].dtype == stale["steps"].dtype == np.int64


def test_an_edge_checks_the_norm_of_a_stale_update_after_scaling_it():
    def at_most_one(update, reference, num_examples):
        norm = float(np.linalg.norm(update["w"] - reference["w"]))
        if norm > 1.0:
            raise ValueError(f"update norm {norm} > 1")

    edge = EdgeAggregator(0, LOSSLESS, at_most_one)
    payload, _ = compress({"w": np.array([1.5, 0.0, 0.0], np.float32)}, LOSSLESS, None,
                          np.random.default_rng(0))
    update = DeviceUpdate("7", payload, 4)

    assert edge.aggregate([update], GLOBAL, 1) is None  # norm 1.5: rejected
    aggregate = edge.aggregate([dataclasses.replace(update, scale=0.5)], GLOBAL, 2)
    assert aggregate is not None and aggregate.accepted == 1  # 0.75 as the cloud sees it


def test_a_stale_deployed_edge_aggregate_is_scaled_by_its_weight():
    cloud = Recording()
    hierarchy = HierarchicalStrategy(cloud, lossless_edges(2), CONTRACT, deployed=True)
    payload, _ = compress({"w": np.array([2.0, 0.0, 0.0], np.float32)}, LOSSLESS, None,
                          np.random.default_rng(0))
    from_edge = as_reply(edge_aggregate_content(EdgeAggregate(0, payload, 5, {}, 2, 0), 10))
    hierarchy.staleness_weights[id(from_edge)] = 0.5

    run_round(hierarchy, [from_edge])

    (seen,) = cloud.replies  # w_global + 0.5 [2, 0, 0]
    np.testing.assert_allclose(arrays_of(seen.content[records.ARRAYS])["w"], [2.0, -1.0, 0.5])


RUN = {"num-clients": 4, "num-server-rounds": 1, "local-epochs": 1, "fraction-evaluate": 0.0,
       "dataset": "smartwatch"}


def _final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "round-001.pt")["model_state"]


def test_with_compression_off_the_hierarchy_equals_flat_fedavg(tmp_path):
    flat = run_in_process({**RUN, "out-dir": str(tmp_path), "run-name": "flat"})
    tiered = run_in_process({**RUN, "out-dir": str(tmp_path), "run-name": "tiered",
                             "num-edges": 2})

    flat_weights, tiered_weights = _final_weights(flat.run_dir()), _final_weights(
        tiered.run_dir())
    assert list(flat_weights) == list(tiered_weights)
    for name, value in flat_weights.items():
        torch.testing.assert_close(tiered_weights[name], value, rtol=1e-5, atol=1e-6)
    history = json.loads((tiered.run_dir() / "summary.json").read_text())["history"]
    assert history[0]["bytes_device_to_edge"] == history[0]["bytes_up"]
    assert 0 < history[0]["bytes_edge_to_cloud"] < history[0]["bytes_device_to_edge"]
    assert history[0]["edge_rejected_updates"] == 0
    flat_history = json.loads((flat.run_dir() / "summary.json").read_text())["history"]
    assert flat_history[0]["bytes_device_to_edge"] is None


def test_a_stale_device_delta_is_scaled_onto_the_global_model_the_async_loop_remembered():
    cloud = Recording()
    hierarchy = HierarchicalStrategy(cloud, lossless_edges(1), CONTRACT)
    current = {"w": np.array([2.0, 0.0, 0.0], np.float32)}
    hierarchy.remember_global(3, arrays_record(current))
    # a device configured later in the same version does not replace the remembered model
    hierarchy.configure_train(3, arrays_record(GLOBAL), ConfigRecord(), grid=None)
    stale = reply({"w": np.array([4.0, 0.0, 0.0], np.float32)}, 1, 0)
    fresh = reply({"w": np.array([0.0, 2.0, 0.0], np.float32)}, 1, 0)
    hierarchy.staleness_weights[id(stale)] = 0.5

    hierarchy.aggregate_train(3, [stale, fresh])

    (edge,) = cloud.replies
    # w_v + (0.5 * [4, 0, 0] + [0, 2, 0]) / 2
    np.testing.assert_allclose(arrays_of(edge.content[records.ARRAYS])["w"], [3.0, 1.0, 0.0])
    assert hierarchy.staleness_weights == {}  # the weights belonged to that buffer


def test_with_compression_off_async_through_the_edge_tier_equals_flat_async(tmp_path):
    run = {"dataset": "synthetic", "num-clients": 6, "local-epochs": 1, "samples-per-client": 24,
           "fraction-evaluate": 0.0, "mode": "async", "latency-sigma": 0.5, "concurrency": 4,
           "buffer-size": 2, "num-server-rounds": 2, "out-dir": str(tmp_path)}
    flat = run_in_process({**run, "run-name": "flat"})
    tiered = run_in_process({**run, "run-name": "tiered", "num-edges": 2})

    # version 1 is made of the first two replies; three of the four devices then training got
    # version 0 (two from the start, one sent after the first reply), so at least one of the
    # two replies of version 2 is one version stale and enters scaled by 1/sqrt(2)
    weights = [torch.load(config.run_dir() / "checkpoints" / "round-002.pt")["model_state"]
               for config in (flat, tiered)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6)
    summaries = [json.loads((c.run_dir() / "summary.json").read_text()) for c in (flat, tiered)]
    assert summaries[0]["async"] == summaries[1]["async"]
    assert summaries[1]["async"]["stale_rejected"] == 0
    history = summaries[1]["history"]
    assert [r["round"] for r in history] == [1, 2]
    assert all(0 < r["bytes_edge_to_cloud"] for r in history)
