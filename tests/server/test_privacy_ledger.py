import json
import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmosaic import records
from fedmosaic.clients.poisoning import malicious_partitions
from fedmosaic.config import RunConfig
from fedmosaic.privacy.central import round_noise_multiplier
from fedmosaic.privacy.ledger import PrivacyLedger
from fedmosaic.server.privacy_ledger import PrivacyLedgerStrategy
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import cached_dataset


class RecordingStrategy:
    """Stands in for a strategy: hands out one shared content, records what it aggregates."""

    def __init__(self):
        self.aggregated = None
        self.shared = RecordDict({records.CONFIG: ConfigRecord({records.LEARNING_RATE: 0.1})})

    def configure_train(self, server_round, arrays, config, grid):
        return [Message(content=self.shared, dst_node_id=node, message_type="train")
                for node in (7, 8)]

    def aggregate_train(self, server_round, replies):
        self.aggregated = list(replies)
        return "arrays", None


def dp_metrics(partition, refused):
    return {records.NUM_EXAMPLES: 0 if refused else 20, records.PARTITION_ID: partition,
            records.DP_EPSILON_SPENT: 1.0, records.DP_EPSILON_BUDGET: 2.0,
            records.DP_DELTA: 1e-5, records.DP_NOISE_MULTIPLIER: 1.0,
            records.DP_REFUSED: int(refused), records.DP_SAMPLE_RATE: 0.05,
            records.DP_STEPS: 0 if refused else 2}


def test_refusals_are_ledgered_and_not_aggregated(train_reply):
    inner, ledger = RecordingStrategy(), PrivacyLedger()
    strategy = PrivacyLedgerStrategy(inner, ledger)
    trained = train_reply({"w": np.ones(2, np.float32)}, dp_metrics(0, False), node=7)
    refused = train_reply({"w": np.zeros(2, np.float32)}, dp_metrics(1, True), node=8)

    strategy.aggregate_train(1, [trained, refused])

    assert inner.aggregated == [trained]
    assert ledger.devices[0].rounds_joined == [1] and ledger.devices[1].refusals == [1]


def test_only_refusals_keep_the_global_model(train_reply):
    inner = RecordingStrategy()
    strategy = PrivacyLedgerStrategy(inner, PrivacyLedger())

    result = strategy.aggregate_train(1, [train_reply({"w": np.zeros(2)}, dp_metrics(1, True))])

    assert result == (None, None) and inner.aggregated is None


def test_a_new_budget_reaches_only_its_device(train_reply):
    inner = RecordingStrategy()
    strategy = PrivacyLedgerStrategy(inner, PrivacyLedger())
    strategy.aggregate_train(1, [train_reply({"w": np.ones(2)}, dp_metrics(3, False), node=7)])

    strategy.set_epsilon_budget(3, 0.5)
    messages = strategy.configure_train(2, None, None, None)

    configs = {m.metadata.dst_node_id: m.content[records.CONFIG] for m in messages}
    assert configs[7][records.DP_EPSILON_BUDGET] == 0.5
    assert records.DP_EPSILON_BUDGET not in configs[8]
    assert records.DP_EPSILON_BUDGET not in inner.shared[records.CONFIG]


def test_a_bad_budget_is_rejected():
    with pytest.raises(ValueError, match="epsilon"):
        PrivacyLedgerStrategy(RecordingStrategy(), PrivacyLedger()).set_epsilon_budget(0, -1.0)


RUN = {"num-clients": 3, "num-server-rounds": 2, "local-epochs": 1, "dp": True,
       "dp-epsilon-budget": 2.0, "fraction-evaluate": 0.0}


def test_dp_run_ledger_and_resume_from_checkpoint(tmp_path):
    first = run_in_process({**RUN, "out-dir": str(tmp_path), "run-name": "first"})
    summary = json.loads((first.run_dir() / "summary.json").read_text())
    checkpoint = first.run_dir() / "checkpoints" / "round-002.pt"

    devices = summary["privacy"]["devices"]
    assert sorted(devices) == ["0", "1", "2"]
    for entry in devices.values():
        assert 0.0 < entry["epsilon_spent"] <= entry["epsilon_budget"] == 2.0
        assert entry["epsilon_spent"] == pytest.approx(entry["epsilon_reported"], rel=1e-9)
        assert entry["rounds_joined"] == [1, 2] and entry["refusals"] == []
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["server_state"]["privacy"] == summary["privacy"]
    board = EventAccumulator(str(first.run_dir() / "tensorboard"))
    board.Reload()
    assert "privacy/epsilon_spent/partition_0" in board.Tags()["scalars"]

    resumed = run_in_process({**RUN, "num-server-rounds": 1, "out-dir": str(tmp_path),
                              "run-name": "resumed", "resume-from": str(checkpoint)})
    after = json.loads((resumed.run_dir() / "summary.json").read_text())

    assert after["initial_accuracy"] == pytest.approx(summary["final_accuracy"])
    for pid, entry in after["privacy"]["devices"].items():
        assert entry["rounds_joined"] == [1, 2, 3]
        assert len(entry["segments"]) == 3
        assert entry["epsilon_spent"] > devices[pid]["epsilon_spent"]
        # the devices got their earlier segments from the ledger and count them, too
        assert entry["epsilon_reported"] == pytest.approx(entry["epsilon_spent"], rel=1e-9)


def test_resume_from_a_missing_checkpoint_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="resume-from"):
        run_in_process({**RUN, "out-dir": str(tmp_path), "run-name": "x",
                        "resume-from": str(tmp_path / "none.pt")})


@pytest.mark.parametrize("mode", ["server", "client"])
def test_central_dp_is_ledgered(tmp_path, mode):
    config = run_in_process({**RUN, "dp": False, "central-dp": mode,
                             "central-noise-multiplier": 1.0, "out-dir": str(tmp_path),
                             "run-name": "central"})
    central = json.loads((config.run_dir() / "summary.json").read_text())["privacy"]["central"]

    assert central["mode"] == mode and len(central["round_noise_multipliers"]) == 2
    assert all(0.0 < z <= 1.0 for z in central["round_noise_multipliers"])
    assert central["epsilon_spent"] > 0.0


def test_central_dp_sees_only_validated_updates_and_accounts_the_aggregated_ones(tmp_path):
    # Two of ten devices send NaN. The validator, outside central DP, rejects them; the
    # round's noise multiplier is accounted from the eight updates that were aggregated.
    config = run_in_process({**RUN, "num-clients": 10, "dp": False, "central-dp": "server",
                             "central-noise-multiplier": 1.0, "attack": "nan",
                             "malicious-fraction": 0.2, "out-dir": str(tmp_path),
                             "run-name": "central-validated"})
    summary = json.loads((config.run_dir() / "summary.json").read_text())
    dataset = cached_dataset(config)
    attackers = malicious_partitions(config.num_clients, config.malicious_fraction, config.seed)
    honest = [len(dataset.partition(p)[0]) for p in range(config.num_clients)
              if p not in attackers]
    expected = round_noise_multiplier(1.0, config.num_clients, honest)

    assert len(attackers) == 2
    assert [row["rejected"] for row in summary["history"]] == [2, 2]
    assert np.isfinite(summary["final_accuracy"])
    np.testing.assert_allclose(summary["privacy"]["central"]["round_noise_multipliers"],
                               [expected, expected])


DP_RUN = RunConfig.from_mapping({"dp": True, "dp-epsilon-budget": 3.0, "num-clients": 4,
                                 "local-epochs": 1})


def planned(partition):
    """An honest trained round under DP_RUN: q = 1/20, 1 epoch of 20 steps (epsilon 2.48)."""
    return dp_metrics(partition, False) | {records.DP_EPSILON_BUDGET: 3.0,
                                           records.DP_STEPS: 20}


def test_the_ledger_refuses_an_over_cap_update_that_claims_not_to_be(train_reply):
    inner, ledger = RecordingStrategy(), PrivacyLedger()
    strategy = PrivacyLedgerStrategy(inner, ledger, config=DP_RUN)
    # claims epsilon 0.9 of 3.0; sigma 0.5, q 1/5, 5 steps compose to about 15.9
    lying = planned(0) | {records.DP_EPSILON_SPENT: 0.9, records.DP_NOISE_MULTIPLIER: 0.5,
                          records.DP_SAMPLE_RATE: 0.2, records.DP_STEPS: 5}
    honest = train_reply({"w": np.ones(2, np.float32)}, planned(1), node=8)

    strategy.aggregate_train(1, [train_reply({"w": np.ones(2)}, lying, node=7), honest])

    assert inner.aggregated == [honest]
    assert strategy.rejections.reasons(1) == {"dp-over-cap": 1}
    assert ledger.devices[0].over_cap == [1] and ledger.devices[0].epsilon_spent > 15


@pytest.mark.parametrize(("metrics", "why"), [
    ({records.NUM_EXAMPLES: 20}, "needs the metrics"),  # a DP run's reply without DP metadata
    (dp_metrics(0, False) | {records.DP_STEPS: 0}, "must report >= 1 step"),
    (dp_metrics(0, True) | {records.NUM_EXAMPLES: 20}, "refusal must report 0 steps"),
    (dp_metrics(0, False) | {records.DP_DELTA: 0.1}, "'dp-delta' must be"),
    (dp_metrics(9, False), "'partition-id' must be an integer in"),
    (dp_metrics(0, False) | {records.DP_SAMPLE_RATE: math.nan}, "'dp-sample-rate' must be"),
])
def test_missing_or_inconsistent_dp_metadata_is_refused(train_reply, metrics, why, caplog):
    inner = RecordingStrategy()
    strategy = PrivacyLedgerStrategy(inner, PrivacyLedger(), config=DP_RUN)
    logger = logging.getLogger("fedmosaic")  # another test's run may stop its propagation
    logger.addHandler(caplog.handler)

    try:
        result = strategy.aggregate_train(1, [train_reply({"w": np.ones(2)}, metrics)])
    finally:
        logger.removeHandler(caplog.handler)

    assert result == (None, None) and inner.aggregated is None
    assert strategy.rejections.reasons(1) == {"dp-metadata": 1}
    assert why in caplog.text


def test_a_node_cannot_change_its_partition_nor_take_a_connected_nodes(train_reply, caplog):
    strategy = PrivacyLedgerStrategy(RecordingStrategy(), PrivacyLedger(), config=DP_RUN)
    strategy._connected = {7, 8}
    strategy.aggregate_train(1, [train_reply({"w": np.ones(2)}, planned(0), node=7)])
    assert strategy.rejections.count(1) == 0

    strategy.aggregate_train(2, [train_reply({"w": np.ones(2)}, planned(1), node=7),
                                 train_reply({"w": np.ones(2)}, planned(0), node=8)])

    assert strategy.rejections.reasons(2) == {"dp-metadata": 2}
    strategy._connected = {8}  # node 7 is gone: its device may come back as node 8
    strategy.aggregate_train(3, [train_reply({"w": np.ones(2)}, planned(0), node=8)])
    assert strategy.rejections.count(3) == 0


@pytest.mark.parametrize("extreme", [
    {records.DP_NOISE_MULTIPLIER: 1e-300},  # the accountant would divide by zero
    {records.DP_NOISE_MULTIPLIER: 1e300},   # or overflow
    {records.DP_SAMPLE_RATE: 1.0, records.DP_STEPS: 2000},  # no honest device's plan
    {records.DP_SAMPLE_RATE: 0.03, records.DP_STEPS: 20},  # q is not 1/b
])
def test_extreme_dp_metadata_is_refused_and_leaves_the_ledger_as_it_was(train_reply, extreme):
    ledger = PrivacyLedger()
    strategy = PrivacyLedgerStrategy(RecordingStrategy(), ledger, config=DP_RUN)

    result = strategy.aggregate_train(1, [train_reply({"w": np.ones(2)}, planned(0) | extreme)])

    assert result == (None, None)
    assert strategy.rejections.reasons(1) == {"dp-metadata": 1}
    assert ledger.devices.get(0) is None or ledger.devices[0].segments == []


def test_without_dp_the_ledger_leaves_dp_metrics_to_validation(train_reply):
    inner, ledger = RecordingStrategy(), PrivacyLedger()
    strategy = PrivacyLedgerStrategy(inner, ledger, config=RunConfig.from_mapping({}))
    reply = train_reply({"w": np.ones(2)}, planned(0) | {records.DP_NOISE_MULTIPLIER: 1e-300})

    strategy.aggregate_train(1, [reply])

    assert inner.aggregated == [reply] and ledger.devices == {}
