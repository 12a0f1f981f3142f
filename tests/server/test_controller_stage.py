"""The controller stage: decisions reach devices, are audited, and never break a cap."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from fedmosaic import records
from fedmosaic.cli import app
from fedmosaic.config import CONTROLLERS, RunConfig
from fedmosaic.privacy.accounting import Segment, epsilon_spent
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.controller.audit import verify_audit_log
from fedmosaic.privacy.controller.policies import build_policy
from fedmosaic.privacy.ledger import PrivacyLedger
from fedmosaic.server.controller_stage import (
    AUDIT_FILE,
    ControllerSettings,
    ControllerStage,
    linkage,
)
from fedmosaic.server.privacy_ledger import PrivacyLedgerStrategy
from fedmosaic.simulation.inprocess import run_in_process

NODES = (11, 12, 13)


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


class Shared:
    """Sends one shared RecordDict to every node, as Flower's FedAvg does."""

    def __init__(self):
        self.content = RecordDict({records.CONFIG: ConfigRecord({"lr": 0.1})})

    def configure_train(self, server_round, arrays, config, grid):
        return [Message(content=self.content, dst_node_id=n, message_type="train")
                for n in NODES]

    def aggregate_train(self, server_round, replies):
        return None, None


def config_budget():
    return RunConfig.from_mapping({}).dp_epsilon_budget


class KnobSink:
    """The anonymizer stage's knob interface: the run's knobs and what was set per node."""

    def __init__(self, knobs=None):
        self.knobs = knobs or AnonymizerKnobs()
        self.node_knobs = {}

    def set_knobs(self, node, knobs):
        self.node_knobs[node] = knobs


def stage(tmp_path, policy="static"):
    config = RunConfig.from_mapping({"dp": True, "controller": policy, "num-clients": 3})
    inner = Shared()
    ledger_stage = PrivacyLedgerStrategy(inner, PrivacyLedger("filter"), config=config)
    controller = ControllerStage(ledger_stage, build_policy(policy),
                                 ControllerSettings(4, 1.0, 0.5), tmp_path / AUDIT_FILE)
    controller.ledger_stage, controller.anonymizer_stage = ledger_stage, KnobSink()
    return controller, inner


def test_each_device_gets_its_share_in_its_own_copy_and_every_decision_is_audited(tmp_path):
    controller, inner = stage(tmp_path)
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})

    messages = list(controller.configure_train(1, arrays, ConfigRecord(), None))

    shares = [m.content[records.CONFIG][records.DP_SPEND_SHARE] for m in messages]
    assert shares == pytest.approx([1 / 4] * 3)  # static, round 1 of 4: even spend
    assert records.DP_SPEND_SHARE not in inner.content[records.CONFIG]  # shared one untouched
    assert set(controller.anonymizer_stage.node_knobs) == set(NODES)
    verdict = verify_audit_log(tmp_path / AUDIT_FILE)
    assert verdict.ok and verdict.entries == 3
    entry = json.loads((tmp_path / AUDIT_FILE).read_text().splitlines()[0])
    assert entry["round"] == 1 and entry["cap_check"]["cap"] == config_budget()
    assert entry["policy_hash"] == build_policy("static").fingerprint()
    # a keyed pseudonym (16 hex digits), not the node id
    assert entry["device"] == controller._pseudonym(NODES[0]) != str(NODES[0])
    assert len(entry["device"]) == 16 and int(entry["device"], 16) >= 0


def test_a_policy_that_sets_the_knobs_keeps_the_runs_reframing(tmp_path):
    controller, _ = stage(tmp_path, policy="random")
    controller.anonymizer_stage = KnobSink(AnonymizerKnobs(reframe=0.6))
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})

    list(controller.configure_train(1, arrays, ConfigRecord(), None))

    set_knobs = controller.anonymizer_stage.node_knobs.values()
    assert {k.reframe for k in set_knobs} == {0.6}
    assert len({k.strength for k in set_knobs}) == len(NODES)  # the policy's own draws
    entry = json.loads((tmp_path / AUDIT_FILE).read_text().splitlines()[0])
    assert entry["action"]["reframe"] == 0.6


def reply(sent, weights):
    content = RecordDict({records.ARRAYS: ArrayRecord({"w": Array(weights.astype(np.float32))})})
    message = Message(content=content, reply_to=sent)
    message.metadata.__dict__["_src_node_id"] = sent.metadata.dst_node_id
    return message


def test_a_round_is_rewarded_when_its_evaluation_arrives_and_leakage_is_this_rounds(tmp_path):
    controller, _ = stage(tmp_path)
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    controller.observe_evaluation(0, 0.10, 2.0)
    sent = list(controller.configure_train(1, arrays, ConfigRecord(), None))
    controller.aggregate_train(1, [reply(sent[0], np.array([1.0, 0.0, 0.0])),
                                   reply(sent[1], np.array([0.0, 1.0, 0.0])),
                                   reply(sent[2], np.zeros(3))])  # the last one refused
    controller.observe_evaluation(1, 0.30, 1.5)

    decided = controller.round_decisions(1)
    # ΔU = 0.2, no leakage yet (no previous updates), no spend entered: w_u·10·0.2 at τ = 0
    assert [d["reward"] for d in decided.values()] == pytest.approx([0.5 * 10 * 0.2] * 3)
    sent = list(controller.configure_train(2, arrays, ConfigRecord(), None))
    controller.aggregate_train(2, [reply(sent[0], np.array([1.0, 0.0, 0.0])),
                                   reply(sent[1], np.array([1.0, 0.0, 0.0]))])
    # node 11 repeats itself: ℓ = cos(own) − cos(node 12's) = 1 − 0; node 12 now looks like
    # node 11: ℓ = 0 − 1; node 13 refused (a zero update, left out) and did not reply again
    assert controller.leakage == pytest.approx({NODES[0]: 1.0, NODES[1]: -1.0})


def test_linkage_probe_by_hand():
    own_before, other_before = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    now = np.array([1.0, 1.0])

    # cos(now, own) − cos(now, other) = 1/√2 − 1/√2 = 0; with more of its own direction:
    assert linkage(now, 1, {1: own_before, 2: other_before}) == pytest.approx(0.0)
    assert linkage(np.array([2.0, 1.0]), 1, {1: own_before, 2: other_before}) == pytest.approx(
        2 / np.sqrt(5) - 1 / np.sqrt(5))
    assert linkage(now, 3, {1: own_before}) == 0.0  # no own previous update


def test_a_controller_needs_dp_and_a_flat_federation():
    with pytest.raises(ValueError, match="set dp=true"):
        RunConfig.from_mapping({"controller": "static"})
    with pytest.raises(ValueError, match="need num-edges=0"):
        RunConfig.from_mapping({"controller": "static", "dp": True, "num-edges": 1})
    with pytest.raises(ValueError, match="ddpg/td3 policy file"):
        RunConfig.from_mapping({"controller": "static", "dp": True,
                                "controller-policy": "x.zip"})


@pytest.mark.parametrize("policy", [p for p in CONTROLLERS if p != "none"])
def test_every_policy_runs_a_short_simulation_within_the_caps(tmp_path, policy):
    config = run_in_process({"num-clients": 2, "num-server-rounds": 2, "local-epochs": 1,
                             "fraction-evaluate": 0.0, "dp": True, "dp-epsilon-budget": 1.0,
                             "controller": policy, "out-dir": str(tmp_path),
                             "run-name": policy})

    run_dir = config.run_dir()
    summary = json.loads((run_dir / "summary.json").read_text())
    verdict = verify_audit_log(run_dir / AUDIT_FILE,
                               expected_last_hash=summary["controller"]["audit_last_hash"])
    assert verdict.ok and verdict.entries == 4  # 2 devices x 2 rounds
    assert summary["controller"]["policy"] == policy
    for entry in summary["privacy"]["devices"].values():
        spent = epsilon_spent([Segment(s, q, int(n)) for s, q, n in entry["segments"]], 1e-5,
                              "filter")
        assert spent <= 1.0 + 1e-6 and entry["over_cap"] == []
    decisions = [d for r in summary["history"] for d in r["controller"].values()]
    assert len(decisions) == 4
    assert all(0.01 <= d["spend-share"] <= 1.0 for d in decisions)
    assert (run_dir / "controller.png").is_file()
    if policy == "static":  # the report shows the decisions
        shown = CliRunner().invoke(app, ["privacy-report", str(run_dir)])
        assert shown.exit_code == 0 and "Privacy controller" in shown.output
        assert "FILTER accountant" in shown.output and "risk per device over rounds" in shown.output
