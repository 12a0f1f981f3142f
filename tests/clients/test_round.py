import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients import round as device_round
from fedmosaic.clients.round import TRAIN_STAGES, DeviceRound, run_train_round
from fedmosaic.config import RunConfig
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.task import build_model, cached_dataset

RUN_CONFIG = {"local-epochs": 1, "num-clients": 10}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def context(**run_config):
    config = RunConfig.from_mapping({**RUN_CONFIG, **run_config}).to_mapping()
    return Context(run_id=1, node_id=5, node_config={records.PARTITION_ID: 3},
                   state=RecordDict(), run_config=config)


def message():
    config = RunConfig.from_mapping(RUN_CONFIG)
    arrays = ArrayRecord(build_model(config, cached_dataset(config)).state_dict())
    content = RecordDict({records.ARRAYS: arrays,
                          records.CONFIG: ConfigRecord({records.SERVER_ROUND: 2})})
    return Message(content=content, dst_node_id=5, message_type="train")


def test_the_stages_run_in_the_documented_order():
    assert [stage.__name__ for stage in TRAIN_STAGES] == [
        "load_partition", "anonymize_inputs", "poison_data", "drop_modalities", "prepare_model",
        "fit_personal_head", "train_model", "train_personal", "keep_personal", "clip_update",
        "poison_model", "reply_update", "tamper_reply", "attach_telemetry", "release_records"]
    for stage in TRAIN_STAGES:
        assert f"\n{stage.__name__} " in device_round.__doc__


def test_a_new_stage_slots_in_and_sees_what_earlier_stages_built():
    seen = []

    def inspect_before_training(state: DeviceRound) -> None:
        seen.append((state.partition_id, state.server_round, len(state.train_arrays),
                     state.model))

    stages = (*TRAIN_STAGES[:2], inspect_before_training, *TRAIN_STAGES[2:])
    reply = run_train_round(message(), context(), stages)

    train_arrays, _ = cached_dataset(RunConfig.from_mapping(RUN_CONFIG)).partition(3)
    assert seen == [(3, 2, len(train_arrays), None)]
    assert reply.content[records.METRICS][records.NUM_EXAMPLES] == len(train_arrays)


def test_a_stage_that_finishes_the_round_skips_the_rest():
    ran = []

    def refuse(state: DeviceRound) -> None:
        state.reply = RecordDict({records.ARRAYS: state.global_arrays,
                                  records.METRICS: MetricRecord({records.NUM_EXAMPLES: 0})})
        state.finished = True

    def never(state: DeviceRound) -> None:
        ran.append(state)

    reply = run_train_round(message(), context(), (device_round.load_partition, refuse, never))

    assert ran == []
    assert reply.content[records.METRICS][records.NUM_EXAMPLES] == 0
    sent = message().content[records.ARRAYS].to_torch_state_dict()
    got = reply.content[records.ARRAYS].to_torch_state_dict()
    assert all(torch.equal(got[k], sent[k]) for k in sent)


def test_stages_that_build_no_reply_are_a_clear_error():
    with pytest.raises(RuntimeError, match=r"\['load_partition'\] built no reply"):
        run_train_round(message(), context(), (device_round.load_partition,))


def test_telemetry_is_attached_after_the_reply_is_built():
    reply = run_train_round(message(), context(telemetry=True))

    assert records.TELEMETRY in reply.content.config_records
    assert records.ARRAYS in reply.content.array_records


@pytest.mark.parametrize("reframe", [0.0, 1.0])
def test_the_device_trains_on_and_releases_what_the_knobs_it_receives_make(reframe):
    dataset = cached_dataset(RunConfig.from_mapping(RUN_CONFIG))
    sent = message()
    sent.content[records.ANONYMIZER] = ArrayRecord(
        MultimodalAnonymizer(dataset.specs).state_dict())
    sent.content[records.ANONYMIZER_KNOBS] = ConfigRecord({"strength": 0.0, "reframe": reframe})
    seen = []

    def inspect(state: DeviceRound) -> None:
        seen.append(state)
        state.reply = RecordDict()

    run_train_round(sent, context(**{"anonymizer-rounds": 1, "anonymize-training": True,
                                     "anonymizer-release": 8}),
                    (device_round.load_partition, device_round.anonymize_inputs, inspect,
                     device_round.release_records))

    state = seen[0]
    name = dataset.specs[0].name
    moved = state.train_arrays.inputs[name] != state.held_arrays.inputs[name]
    assert moved.any() == (reframe > 0)  # λ = 0: only reframing changes a window
    held = {window.tobytes() for window in state.held_arrays.inputs[name]}
    released = state.reply[records.RELEASE][name].numpy()
    assert len(released) == 8
    assert all((window.tobytes() in held) == (reframe == 0) for window in released)
