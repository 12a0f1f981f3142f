"""Shared fixtures: keep torch to one thread per process on the 2-core CI machine."""

from pathlib import Path

import pytest
import torch

from fedmosaic.launch.processes import processes_with_env

torch.set_num_threads(1)


@pytest.fixture
def leftover_processes():
    """Callable: live processes started for the run folder ``run_dir`` (via its FLWR_HOME)."""
    return lambda run_dir: processes_with_env("FLWR_HOME", str(Path(run_dir) / ".flwr"))


@pytest.fixture
def train_reply():
    """Callable: a training reply from ``node`` carrying ``{name: ndarray}`` and metrics."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1

    def make(arrays, metrics, node=7):
        sent = Message(content=RecordDict(), dst_node_id=node, message_type="train")
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=sent)

    return make


class FakeClock:
    """A monotonic clock that moves only when code under test sleeps on it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def fake_clock():
    """A :class:`FakeClock` at 0 s: pass it as ``clock`` and its ``sleep`` as ``sleep``."""
    return FakeClock()
