"""A device's state waits on disk between its rounds (``device-state = disk``)."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients.state_store import (
    keep_state_on_disk,
    read_state,
    resolved_device_state,
    state_file,
)
from fedmosaic.config import RunConfig
from fedmosaic.simulation.inprocess import InProcessGrid, run_in_process


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def device(tmp_path, device_state, partition=3):
    config = RunConfig.from_mapping({"device-state": device_state, "out-dir": str(tmp_path),
                                     "run-name": "run"}).to_mapping()
    return Context(run_id=1, node_id=5, node_config={records.PARTITION_ID: partition},
                   state=RecordDict(), run_config=config)


def count_visits(message, context):
    visits = context.state.config_records.setdefault("visits", ConfigRecord({"n": 0}))
    visits["n"] = int(visits["n"]) + 1
    return Message(RecordDict({"metrics": MetricRecord({"visits": visits["n"]})}),
                   reply_to=message)


def visit(context):
    message = Message(RecordDict(), dst_node_id=5, message_type="train")
    return keep_state_on_disk(message, context, count_visits).content["metrics"]["visits"]


def test_on_disk_the_state_is_read_for_a_message_and_written_back_after_it(tmp_path):
    context = device(tmp_path, "disk")
    path = state_file(RunConfig.from_mapping(context.run_config), context, 3)

    assert [visit(context) for _ in range(3)] == [1, 2, 3]
    assert len(context.state) == 0  # nothing stays in memory between messages
    assert path == tmp_path / "run" / "device-state" / "partition-3.state"
    assert read_state(path)["visits"]["n"] == 3
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_in_memory_the_state_stays_in_the_context(tmp_path):
    context = device(tmp_path, "memory")

    assert [visit(context) for _ in range(2)] == [1, 2]
    assert context.state["visits"]["n"] == 2
    assert not (tmp_path / "run").exists()


def test_a_failed_message_keeps_what_it_recorded(tmp_path):
    context = device(tmp_path, "disk")

    def record_then_fail(message, context):
        context.state["spent"] = ConfigRecord({"epsilon": 0.5})
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        keep_state_on_disk(Message(RecordDict(), dst_node_id=5, message_type="train"), context,
                           record_then_fail)
    path = state_file(RunConfig.from_mapping(context.run_config), context, 3)
    assert read_state(path)["spent"]["epsilon"] == 0.5 and len(context.state) == 0


@pytest.mark.parametrize(("given", "shared", "resolved"), [
    ("auto", True, "disk"), ("auto", False, "memory"), ("memory", True, "memory"),
    ("disk", False, "disk")])
def test_auto_is_disk_only_where_devices_share_the_run_folder(given, shared, resolved):
    assert resolved_device_state({"device-state": given}, shared)["device-state"] == resolved


def test_a_run_with_state_on_disk_equals_one_with_state_in_memory(tmp_path):
    """Edge tier with top-k (error-feedback residuals) and FedRep (personal heads)."""
    tiny = {"num-clients": 4, "num-server-rounds": 3, "local-epochs": 1, "window-seconds": 0.5,
            "fraction-evaluate": 1.0, "num-edges": 2, "device-topk": 0.3,
            "personalization": "fedrep", "out-dir": str(tmp_path)}
    stale = tmp_path / "disk" / "device-state" / "partition-99.state"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an earlier run")
    grids = []

    class RecordingGrid(InProcessGrid):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            grids.append(self)

    import fedmosaic.simulation.inprocess as inprocess
    original, inprocess.InProcessGrid = inprocess.InProcessGrid, RecordingGrid
    try:
        on_disk = run_in_process({**tiny, "run-name": "disk", "device-state": "disk"})
        in_memory = run_in_process({**tiny, "run-name": "memory", "device-state": "memory"})
    finally:
        inprocess.InProcessGrid = original

    histories = [json.loads((c.run_dir() / "summary.json").read_text())["history"]
                 for c in (on_disk, in_memory)]
    for key in ("accuracy", "device_accuracy", "bytes_device_to_edge"):
        np.testing.assert_allclose([r[key] for r in histories[0]],
                                   [r[key] for r in histories[1]], rtol=1e-6)
    files = sorted(p.name for p in (on_disk.run_dir() / "device-state").iterdir())
    assert files == [f"partition-{p}.state" for p in range(4)]  # the stale one is gone
    kept = read_state(on_disk.run_dir() / "device-state" / "partition-0.state")
    assert records.DEVICE_RESIDUAL in kept and records.PERSONAL in kept
    assert all(len(c.state) == 0 for c in grids[0].contexts.values())
    assert all(records.DEVICE_RESIDUAL in c.state for c in grids[1].contexts.values())


def test_a_device_that_drops_its_state_does_not_get_the_old_file_back(tmp_path):
    context = device(tmp_path, "disk")
    visit(context)

    def forget(message, context):
        context.state = RecordDict()
        return Message(RecordDict(), reply_to=message)

    keep_state_on_disk(Message(RecordDict(), dst_node_id=5, message_type="train"), context,
                       forget)

    assert visit(context) == 1  # counting starts again
