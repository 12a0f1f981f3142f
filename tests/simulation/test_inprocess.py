import json

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmosaic import records
from fedmosaic.clients.app import app as fedmosaic_client_app
from fedmosaic.simulation.inprocess import InProcessGrid, run_in_process

SMALL_RUN = {"num-clients": 3, "num-server-rounds": 2, "local-epochs": 1,
             "fraction-evaluate": 0.0, "run-name": "inprocess"}


def test_run_writes_the_usual_run_folder(tmp_path):
    config = run_in_process({**SMALL_RUN, "out-dir": str(tmp_path)})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert [r["round"] for r in summary["history"]] == [1, 2]
    assert all(r["replies"] == 3 and r["failed_replies"] == 0 for r in summary["history"])
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in summary["history"])
    assert (config.run_dir() / "checkpoints" / "round-002.pt").exists()


def test_a_seeded_run_samples_the_same_devices_and_repeats_exactly(tmp_path):
    sampled = {**SMALL_RUN, "num-clients": 4, "fraction-train": 0.5, "seed": 3,
               "out-dir": str(tmp_path)}

    histories = []
    for name in ("first", "second"):
        config = run_in_process({**sampled, "run-name": name})
        summary = json.loads((config.run_dir() / "summary.json").read_text())
        histories.append([(r["replies"], r["train_loss"], r["accuracy"])
                          for r in summary["history"]])

    assert [replies for replies, *_ in histories[0]] == [2, 2]
    assert histories[0] == histories[1]


def test_a_failing_client_becomes_an_error_reply_and_the_round_goes_on(tmp_path):
    failing = ClientApp()

    @failing.train()
    def train(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 0:
            raise RuntimeError("sensor unplugged")
        return fedmosaic_client_app(msg, context)

    config = run_in_process({**SMALL_RUN, "out-dir": str(tmp_path)}, client_app=failing)

    history = json.loads((config.run_dir() / "summary.json").read_text())["history"]
    assert [(r["replies"], r["failed_replies"]) for r in history] == [(2, 1), (2, 1)]


def _counting_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        state = context.state.config_records.setdefault("visits", ConfigRecord({"n": 0}))
        state["n"] = int(state["n"]) + 1
        metrics = MetricRecord({"visits": state["n"]})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def test_each_node_keeps_its_context_state_across_messages():
    grid = InProcessGrid(_counting_app(), [{"partition-id": 0}, {"partition-id": 1}], {})
    content = RecordDict({records.ARRAYS: ArrayRecord()})

    for expected in (1, 2, 3):
        replies = grid.send_and_receive(
            [Message(content, node, "train") for node in grid.get_node_ids()])
        assert [r.content["metrics"]["visits"] for r in replies] == [expected, expected]


def test_a_message_for_an_unknown_node_is_refused():
    grid = InProcessGrid(_counting_app(), [{"partition-id": 0}], {})

    with pytest.raises(ValueError, match="nodes 1..1"):
        grid.send_and_receive([Message(RecordDict(), 7, "train")])
