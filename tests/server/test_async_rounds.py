"""Asynchronous buffered rounds (``mode = async``): staleness, the ledger, the clock."""

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.server.async_rounds import rewritten, staleness_weight
from fedmosaic.server.latency import LatencyModel
from fedmosaic.simulation.inprocess import run_in_process

TINY = {"dataset": "synthetic", "num-clients": 6, "local-epochs": 1, "samples-per-client": 24,
        "fraction-evaluate": 0.0, "mode": "async", "latency-sigma": 0.5}


def summary(config):
    return json.loads((config.run_dir() / "summary.json").read_text())


def test_staleness_weight_is_one_over_root_one_plus_staleness():
    assert [staleness_weight(s) for s in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    with pytest.raises(ValueError, match="staleness must be >= 0, got -1"):
        staleness_weight(-1)


def test_a_stale_reply_enters_the_chain_as_the_current_model_plus_its_scaled_update():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    sent = {"w": np.array([1.0, 1.0], np.float32), "steps": np.array([3], np.int64)}
    current = {"w": np.array([2.0, 0.0], np.float32), "steps": np.array([5], np.int64)}
    trained = {"w": np.array([1.5, 3.0], np.float32), "steps": np.array([9], np.int64)}
    instruction = Message(RecordDict(), dst_node_id=4, message_type="train")
    reply = Message(RecordDict({records.ARRAYS: ArrayRecord({k: Array(v) for k, v in
                                                             trained.items()}),
                                records.METRICS: MetricRecord({records.NUM_EXAMPLES: 10})}),
                    reply_to=instruction)

    rewritten(reply, sent, current, staleness_weight(3))

    arrays = reply.content[records.ARRAYS]
    # current + 0.5 (trained - sent) = [2 + 0.25, 0 + 1]
    np.testing.assert_allclose(arrays["w"].numpy(), [2.25, 1.0])
    assert arrays["w"].numpy().dtype == np.float32
    assert arrays["steps"].numpy().tolist() == [5]  # counters follow the current model
    assert reply.content[records.METRICS][records.NUM_EXAMPLES] == 10


def test_latencies_are_reproducible_and_stragglers_are_the_asked_share():
    config = RunConfig.from_mapping({"straggler-fraction": 0.25, "straggler-slowdown": 5.0,
                                     "latency-sigma": 0.0, "seed": 3})
    model = LatencyModel(config, list(range(100, 140)))

    slow = [n for n in range(100, 140) if model.is_straggler(n)]
    assert len(slow) == 10
    assert {model.seconds(n, 1) for n in slow} == {5.0}
    assert model.seconds(100, 7) == LatencyModel(config, list(range(100, 140))).seconds(100, 7)


def test_a_reply_older_than_max_staleness_is_rejected_and_still_charged(tmp_path):
    # four devices train at once and one reply makes a version: with max-staleness 0 the three
    # others were trained on the previous version when they arrive
    config = run_in_process({**TINY, "num-server-rounds": 3, "concurrency": 4, "buffer-size": 1,
                             "max-staleness": 0, "dp": True, "out-dir": str(tmp_path),
                             "run-name": "stale"})

    result = summary(config)
    stale = sum(r["rejected_reasons"].get("stale", 0) for r in result["history"])
    unused = sum(r["rejected_reasons"].get("unused", 0) for r in result["history"])
    run = result["async"]
    assert stale > 0 and stale == run["stale_rejected"]
    assert unused == run["unused_at_end"] == 3  # the other three of four were in flight
    assert [r["round"] for r in result["history"]] == [1, 2, 3]
    trained = sum(len(entry["segments"]) for entry in result["privacy"]["devices"].values())
    assert trained == run["dispatched"] - run["failures"]  # every training charged, once


def test_under_the_edge_tier_a_stale_reply_is_rejected_before_it_reaches_an_edge(tmp_path):
    config = run_in_process({**TINY, "num-server-rounds": 3, "concurrency": 4, "buffer-size": 1,
                             "max-staleness": 0, "num-edges": 2, "out-dir": str(tmp_path),
                             "run-name": "stale-edges"})

    result = summary(config)
    stale = [r["rejected_reasons"].get("stale", 0) for r in result["history"]]
    assert sum(stale) > 0 and sum(stale) == result["async"]["stale_rejected"]
    for record in result["history"]:
        dropped = record["rejected_reasons"].get("stale", 0) + record["rejected_reasons"].get(
            "unused", 0)
        # the meter counted every reply; the edges received only those the filter kept
        assert (record["bytes_device_to_edge"] < record["bytes_up"]) == (dropped > 0)
        assert record["edge_rejected_updates"] == 0


def test_async_runs_to_the_end_faster_on_the_simulated_clock_than_sync(tmp_path):
    common = {**TINY, "num-server-rounds": 4, "straggler-fraction": 0.34, "latency-sigma": 0.0,
              "fraction-train": 1.0, "out-dir": str(tmp_path)}
    asynchronous = summary(run_in_process({**common, "run-name": "async", "concurrency": 4,
                                           "buffer-size": 2}))
    synchronous = summary(run_in_process({**common, "run-name": "sync", "mode": "sync"}))

    for result in (asynchronous, synchronous):
        times = [r["simulated_seconds"] for r in result["history"]]
        assert len(times) == 4 and times == sorted(times) and times[0] > 0
        assert not math.isnan(result["final_accuracy"])
    # a synchronous round waits for a straggler (5 s); four async versions need eight replies
    assert synchronous["history"][0]["simulated_seconds"] >= 5.0
    assert asynchronous["history"][-1]["simulated_seconds"] < synchronous["history"][-1][
        "simulated_seconds"]
    assert all(r["replies"] >= 2 for r in asynchronous["history"])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"num-edges": 2, "edge-role": "cloud", "concurrency": 3},
     r"concurrency \(3\) must not exceed num-edges \(2\)"),
    ({"central-dp": "server"}, "mode=async does not combine with central-dp"),
    ({"concurrency": 3, "buffer-size": 4}, r"buffer-size \(4\) must not exceed concurrency"),
    ({"concurrency": 9}, r"concurrency \(9\) must not exceed num-clients \(6\)"),
    ({"max-staleness": -1}, "max-staleness must be >= 0, got -1"),
    ({"straggler-fraction": 1.5}, r"straggler-fraction must lie in \[0, 1\]"),
])
def test_impossible_async_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping({**TINY, **overrides})


def test_an_async_run_ends_even_when_every_device_fails(tmp_path):
    from flwr.clientapp import ClientApp

    failing = ClientApp()

    @failing.train()
    def train(message, context):
        raise RuntimeError("this device cannot train")

    config = run_in_process({**TINY, "num-server-rounds": 2, "concurrency": 2,
                             "buffer-size": 2, "out-dir": str(tmp_path), "run-name": "fails"},
                            client_app=failing)

    result = summary(config)
    assert [r["round"] for r in result["history"]] == [1, 2]
    assert all(r["failed_replies"] >= 2 and r["replies"] == 0 for r in result["history"])
    run = result["async"]
    assert run["failures"] + run["unused_at_end"] == run["dispatched"]
    assert result["final_accuracy"] == result["initial_accuracy"]


def test_async_work_without_a_reply_times_out_and_superlink_errors_are_charged_to_their_node():
    import time

    from flwr.app import Error
    from flwr.serverapp.strategy import FedAvg

    from fedmosaic.server.async_rounds import AsyncRounds, Dispatch, StalenessFilter
    from fedmosaic.server.node_loss import TIMEOUT_CODE

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 999
    config = RunConfig.from_mapping({**TINY, "round-timeout": 30.0})
    rounds = AsyncRounds(config, FedAvg(), StalenessFilter(FedAvg()), None)
    sent = {}
    for node, message_id in ((4, "late"), (5, "dead"), (6, "fresh")):
        message = Message(RecordDict(), dst_node_id=node, message_type="train")
        message.metadata.__dict__["_message_id"] = message_id
        age = 60.0 if message_id == "late" else 0.0
        sent[message_id] = Dispatch(node, 0, 0.0, 1, message, time.monotonic() - age)
    dead = Message(Error(0, "Node Unavailable"), reply_to=sent["dead"].message)
    dead.metadata.__dict__["_src_node_id"] = 999  # as the SuperLink answers for a dead node

    class Grid:
        def pull_messages(self, ids):
            return [dead] if "dead" in ids else []

    arrived = {}
    rounds._collect(Grid(), sent, arrived)

    assert set(arrived) == {"late", "dead"}  # "fresh" is still within round-timeout
    assert arrived["late"].error.code == TIMEOUT_CODE
    assert arrived["late"].metadata.src_node_id == 4
    assert arrived["dead"].metadata.src_node_id == 5
    assert rounds.timeouts == 1


def test_a_reply_after_its_time_out_enters_the_ledger_unused_and_its_device_stays_busy():
    import time

    from flwr.serverapp.strategy import FedAvg

    from fedmosaic.server.async_rounds import UNUSED, AsyncRounds, Dispatch, StalenessFilter

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 999
    rounds = AsyncRounds(RunConfig.from_mapping({**TINY, "round-timeout": 30.0}), FedAvg(),
                         StalenessFilter(FedAvg()), None)
    message = Message(RecordDict(), dst_node_id=4, message_type="train")
    message.metadata.__dict__["_message_id"] = "slow"
    in_flight = {"slow": Dispatch(4, 0, 0.0, 1, message, time.monotonic() - 60.0)}
    late = Message(RecordDict({records.METRICS: MetricRecord({"num-examples": 3})}),
                   reply_to=message)

    class Grid:
        def __init__(self):
            self.replies = []

        def pull_messages(self, ids):
            return [r for r in self.replies if r.metadata.reply_to_message_id in ids]

    grid, arrived = Grid(), {}
    rounds._collect(grid, in_flight, arrived)  # timed out: a failure now, its device busy
    in_flight.pop("slow")
    assert arrived.pop("slow").has_error() and list(rounds._late) == ["slow"]
    grid.replies = [late]
    rounds._collect(grid, in_flight, arrived)  # the real reply comes after all

    assert rounds._late == {} and rounds._late_replies == [late] and arrived == {}
    assert rounds.staleness.marked[id(late)] == UNUSED  # its spend is entered, not aggregated
