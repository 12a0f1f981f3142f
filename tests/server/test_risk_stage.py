"""Risk perception in the server chain: scores from messages only, anomalies stand out."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.data.smartwatch import smartwatch_specs
from fedmosaic.privacy.risk.perception import RiskPerception
from fedmosaic.server.risk_stage import RiskStage
from fedmosaic.server.validation import Rejections
from fedmosaic.simulation.inprocess import run_in_process

SPECS = smartwatch_specs(0.5)
NODES = range(1, 7)
ANOMALOUS = 6


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture
def no_raw_data(monkeypatch):
    """Any read of a device's samples on the server fails the test."""
    def refuse(*_):
        raise AssertionError("risk perception read a device's raw data")
    for name in ("partition", "central_test"):
        monkeypatch.setattr(FederatedDataset, name, refuse)
        for subclass in FederatedDataset.__subclasses__():
            monkeypatch.setattr(subclass, name, refuse, raising=False)


class Median:
    """Sends to every node; aggregates the replies' ``arrays`` by their median (robust, so
    the aggregate keeps the honest direction while one device attacks)."""

    def configure_train(self, server_round, arrays, config, grid):
        return [Message(content=RecordDict({records.ARRAYS: arrays}), dst_node_id=n,
                        message_type="train") for n in NODES]

    def aggregate_train(self, server_round, replies):
        stacked = np.median([r.content[records.ARRAYS]["w"].numpy() for r in replies], axis=0)
        return ArrayRecord({"w": Array(stacked.astype(np.float32))}), None


def reply(sent, weights, load=0.2):
    content = RecordDict({
        records.ARRAYS: ArrayRecord({"w": Array(weights.astype(np.float32))}),
        records.METRICS: MetricRecord({records.NUM_EXAMPLES: 10,
                                       records.MODALITIES_HELD: [1, 1],
                                       records.CPU_LOAD: load, records.MEMORY_LOAD: load})})
    message = Message(content=content, reply_to=sent)
    message.metadata.__dict__["_src_node_id"] = sent.metadata.dst_node_id
    return message


def run_rounds(stage, rounds, rng):
    global_weights = np.zeros(50, np.float32)
    direction = rng.normal(size=50)
    for server_round in range(1, rounds + 1):
        sent = stage.configure_train(server_round, ArrayRecord({"w": Array(global_weights)}),
                                     ConfigRecord(), None)
        replies = []
        for message in sent:
            step = 0.1 * direction + 0.02 * rng.normal(size=50)
            if message.metadata.dst_node_id == ANOMALOUS and server_round > 8:
                step = -10 * step  # a scaled, sign-flipped update
            replies.append(reply(message, global_weights + step))
        stage.aggregate_train(server_round, replies)


def test_every_replying_device_gets_a_score_from_its_messages_alone(no_raw_data):
    rejections = Rejections()
    rejections.add(1, "norm", node=3)
    stage = RiskStage(Median(), SPECS, RiskPerception(), rejections=[rejections])

    run_rounds(stage, rounds=12, rng=np.random.default_rng(0))

    for server_round in range(1, 13):
        scores = stage.round_scores(server_round)
        assert sorted(scores) == [str(n) for n in NODES]
        for metrics in scores.values():
            assert set(metrics) == {"risk", "risk-channel", "risk-sensitivity", "risk-context",
                                    "risk-resources", "round-trip-seconds", "reply-bytes",
                                    "update-norm", "cosine-to-aggregate", "rejections"}
            assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k.startswith("risk"))
    assert stage.observations[1][3].channel.rejections == 1.0
    assert stage.observations[1][2].channel.rejections == 0.0
    late = stage.scores[12]  # the channel model was refitted after the attack began
    clean = [n for n in NODES if n not in (ANOMALOUS, 3)]  # node 3 has a rejection on record
    assert late[ANOMALOUS].channel > 0.9 > 0.5 > max(late[n].channel for n in clean)
    assert late[ANOMALOUS].score > max(late[n].score for n in clean)
    assert late[3].channel > max(late[n].channel for n in clean)


def test_a_reply_whose_arrays_do_not_fit_is_scored_without_an_update(no_raw_data):
    stage = RiskStage(Median(), SPECS, RiskPerception())
    sent = list(stage.configure_train(1, ArrayRecord({"w": Array(np.zeros(4, np.float32))}),
                                      ConfigRecord(), None))
    replies = [reply(m, np.ones(4)) for m in sent[:-1]]
    odd = reply(sent[-1], np.ones(4))
    odd.content[records.ARRAYS] = ArrayRecord({"v": Array(np.ones(3, np.float32))})
    stage.strategy.aggregate_train = lambda r, replies: (
        ArrayRecord({"w": Array(np.ones(4, np.float32))}), None)

    stage.aggregate_train(1, [*replies, odd])

    observed = stage.observations[1][sent[-1].metadata.dst_node_id].channel
    assert observed.update_norm == 0.0 and observed.cosine_to_aggregate == 0.0
    assert stage.observations[1][1].channel.cosine_to_aggregate == pytest.approx(1.0)


def test_a_run_records_risk_in_its_history(tmp_path):
    config = run_in_process({"num-clients": 3, "num-server-rounds": 2, "local-epochs": 1,
                             "window-seconds": 0.5, "out-dir": str(tmp_path),
                             "run-name": "risk"})

    history = [json.loads(line) for line in
               (config.run_dir() / "history.jsonl").read_text().splitlines()]
    for entry in history:
        assert sorted(entry["risk"]) == ["1", "2", "3"]
        assert all(0.0 <= node["risk"] <= 1.0 for node in entry["risk"].values())
