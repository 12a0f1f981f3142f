"""The overhead benchmark's baseline Flower app trains one partition and replies correctly."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

APP_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "flower_baseline"


@pytest.fixture(scope="module")
def baseline():
    sys.path.insert(0, str(APP_DIR))
    try:
        from flower_quickstart_baseline import client_app, task
    finally:
        sys.path.remove(str(APP_DIR))
    with (APP_DIR / "pyproject.toml").open("rb") as handle:
        run_config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    return client_app, task, run_config


def _train_message(arrays: ArrayRecord, lr: float) -> Message:
    metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0,
                        message_type="train")
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"lr": lr})})
    return Message(content=content, metadata=metadata)


@pytest.fixture
def one_thread():
    """One torch thread, as in a simulation actor: fast even on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_on_one_partition_replies_with_arrays_and_num_examples(baseline, one_thread):
    client_app, task, run_config = baseline
    model = task.Net(run_config)
    trainloader, _ = task.load_data(3, run_config)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 3, "num-partitions": 10},
                      state=RecordDict(), run_config=dict(run_config))

    reply = client_app.app(_train_message(ArrayRecord(model.state_dict()), 0.003), context)

    assert not reply.has_error()
    returned = reply.content["arrays"].to_torch_state_dict()
    assert set(returned) == set(model.state_dict())
    assert any(not np.allclose(returned[k].numpy(), v.numpy())
               for k, v in model.state_dict().items())
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(trainloader.dataset) > 0
    assert np.isfinite(metrics["train_loss"])
