import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients.app import train_locally
from fedmosaic.clients.telemetry import publish_telemetry
from fedmosaic.config import RunConfig
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import build_model, cached_dataset

# 2 sensor modalities x 3 channels x (mean, std) = 12 fields at ε = 0.5 each
RUN_CONFIG = {"local-epochs": 1, "telemetry": True, "telemetry-epsilon": 0.5,
              "telemetry-budget": 1.0}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def context(overrides=None):
    config = RunConfig.from_mapping({**RUN_CONFIG, **(overrides or {})}).to_mapping()
    return Context(run_id=1, node_id=5, node_config={"partition-id": 1},
                   state=RecordDict(), run_config=config)


def test_publish_spends_from_the_ledger_in_context_state_until_the_budget_is_gone():
    config = RunConfig.from_mapping(RUN_CONFIG)
    dataset = cached_dataset(config)
    train_arrays, _ = dataset.partition(1)
    ctx = context()
    rng = np.random.default_rng(0)

    published = [publish_telemetry(train_arrays, dataset.specs, config, ctx, rng)
                 for _ in range(3)]

    assert [p[records.TELEMETRY_EPSILON_SPENT] for p in published] == [6.0, 6.0, 0.0]
    assert [p[records.TELEMETRY_EPSILON_TOTAL] for p in published] == [6.0, 12.0, 12.0]
    assert len(published[2][records.TELEMETRY_WITHHELD]) == 12
    assert dict(ctx.state[records.TELEMETRY_LEDGER]) == {
        f"{m}.ch{c}.{s}": 1.0 for m in ("accelerometer", "gyroscope") for c in range(3)
        for s in ("mean", "std")}
    means = [published[0][f"accelerometer.ch{c}.mean"] for c in range(3)]
    assert all(-3.0 <= v <= 3.0 for v in means)


def test_training_reply_carries_telemetry_only_when_enabled():
    config = RunConfig.from_mapping(RUN_CONFIG)
    arrays = ArrayRecord(build_model(config, cached_dataset(config)).state_dict())

    def train_message():
        content = RecordDict({records.ARRAYS: arrays,
                              records.CONFIG: ConfigRecord({records.SERVER_ROUND: 1})})
        return Message(content=content, dst_node_id=5, message_type="train")

    on = train_locally(train_message(), context())
    off = train_locally(train_message(), context({"telemetry": False}))

    assert on.content[records.TELEMETRY][records.TELEMETRY_EPSILON_SPENT] == 6.0
    assert records.TELEMETRY not in off.content
    # the reply still has exactly one MetricRecord, as Flower's strategies require
    assert len(on.content.metric_records) == 1


@pytest.mark.parametrize("overrides, message", [
    ({"telemetry-epsilon": 0.0}, "telemetry-epsilon must be finite and > 0"),
    ({"telemetry-bound": -1.0}, "telemetry-bound must be finite and > 0"),
    ({"telemetry-budget": 0.1}, "telemetry-budget must be finite and >= telemetry-epsilon"),
])
def test_bad_telemetry_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping({**RUN_CONFIG, **overrides})


def test_a_run_with_telemetry_completes_without_failed_replies(tmp_path):
    config = run_in_process({"num-clients": 2, "num-server-rounds": 2, "local-epochs": 1,
                             "fraction-evaluate": 0.0, "telemetry": True,
                             "out-dir": str(tmp_path), "run-name": "telemetry"})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert [row["failed_replies"] for row in summary["history"]] == [0, 0]
    assert [row["replies"] for row in summary["history"]] == [2, 2]
