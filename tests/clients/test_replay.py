"""A round of the run asked again (the server resumed) is answered again, never retrained."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients.replay import replay_repeated_rounds, run_round
from fedmosaic.clients.state_store import keep_state_on_disk
from fedmosaic.config import RunConfig


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def device(tmp_path, run_id=1, state_dir=True, device_state="memory", dp=False):
    config = RunConfig.from_mapping({"device-state": device_state, "out-dir": str(tmp_path),
                                     "run-name": "run", "dp": dp}).to_mapping()
    node_config = {records.PARTITION_ID: 2}
    if state_dir:
        node_config[records.STATE_DIR] = str(tmp_path / "state")
    return Context(run_id=run_id, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config=config)


class Trainer:
    """Counts trainings; each reply carries a fresh array (as a new DP release would)."""

    def __init__(self):
        self.trained = 0

    def __call__(self, message, context):
        self.trained += 1
        content = RecordDict({
            records.ARRAYS: ArrayRecord({"w": Array(np.full(2, self.trained, np.float32))}),
            records.METRICS: MetricRecord({"num-examples": 5})})
        return Message(content, reply_to=message)


def train_message(server_round, offset=0, message_type="train", model=None, token="run-a"):
    config = {records.SERVER_ROUND: server_round, records.RUN_TOKEN: token}
    if offset is not None:
        config[records.ROUND_OFFSET] = offset
    model = np.full(3, (offset or 0) + server_round if model is None else model, np.float32)
    return Message(RecordDict({records.CONFIG: ConfigRecord(config),
                               records.ARRAYS: ArrayRecord({"w": Array(model)})}),
                   dst_node_id=5, message_type=message_type)


def weights(reply):
    return reply.content[records.ARRAYS]["w"].numpy().tolist()


def test_a_resumed_server_asking_again_for_a_round_gets_the_same_reply_without_training(
        tmp_path):
    trainer = Trainer()
    before = device(tmp_path)  # the run before the server stopped ...
    first = [replay_repeated_rounds(train_message(r), before, trainer) for r in (1, 2, 3)]
    after = device(tmp_path, run_id=2)  # ... and the resumed run: a new Flower run, new context

    again = replay_repeated_rounds(train_message(1, offset=2), after, trainer)  # round 3
    later = replay_repeated_rounds(train_message(2, offset=2), after, trainer)  # round 4

    assert trainer.trained == 4
    assert weights(again) == weights(first[2]) == [3.0, 3.0]
    assert weights(later) == [4.0, 4.0]
    assert (tmp_path / "state" / "run" / "partition-2-last-reply.pb").is_file()


def test_with_device_state_on_disk_the_reply_is_kept_in_the_device_state(tmp_path):
    trainer = Trainer()

    def round_of(server_round, offset):
        context = device(tmp_path, state_dir=False, device_state="disk", dp=True)
        return keep_state_on_disk(train_message(server_round, offset), context,
                                  lambda m, c: replay_repeated_rounds(m, c, trainer))

    first = round_of(1, 0)
    again = round_of(1, 0)

    assert trainer.trained == 1 and weights(again) == weights(first)


def test_what_is_not_a_numbered_training_round_is_never_replayed(tmp_path):
    trainer = Trainer()
    context = device(tmp_path)

    for message in (train_message(1, offset=None), train_message(1, offset=None),  # async
                    train_message(1, message_type="evaluate"),
                    train_message(1, message_type="evaluate")):
        replay_repeated_rounds(message, context, trainer)
    memory_only = device(tmp_path, state_dir=False)
    replay_repeated_rounds(train_message(1), memory_only, trainer)
    replay_repeated_rounds(train_message(1), memory_only, trainer)
    on_disk_without_dp = device(tmp_path / "plain", state_dir=False, device_state="disk")
    replay_repeated_rounds(train_message(1), on_disk_without_dp, trainer)
    replay_repeated_rounds(train_message(1), on_disk_without_dp, trainer)

    assert trainer.trained == 8
    assert records.LAST_REPLY not in on_disk_without_dp.state  # no model kept per device
    assert run_round(train_message(4, offset=3)) == 7 and run_round(train_message(4, None)) is None


def test_the_same_round_number_with_another_model_is_trained_not_replayed(tmp_path):
    trainer = Trainer()
    context = device(tmp_path)
    replay_repeated_rounds(train_message(3, offset=0, model=1.0), context, trainer)

    # an older checkpoint resumed, or a new run reusing the run name: round 3 again, other model
    other = replay_repeated_rounds(train_message(3, offset=0, model=2.0), context, trainer)
    same = replay_repeated_rounds(train_message(3, offset=0, model=2.0), context, trainer)

    assert trainer.trained == 2
    assert weights(other) == weights(same) == [2.0, 2.0]


def test_a_new_run_reusing_the_run_name_and_seed_never_gets_an_old_runs_reply(tmp_path):
    trainer = Trainer()
    replay_repeated_rounds(train_message(1, token="first"), device(tmp_path), trainer)

    again = replay_repeated_rounds(train_message(1, token="second"), device(tmp_path, run_id=2),
                                   trainer)

    assert trainer.trained == 2 and weights(again) == [2.0, 2.0]
