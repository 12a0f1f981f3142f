import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients.app import evaluate_locally, train_locally
from fedmosaic.clients.poisoning import malicious_partitions
from fedmosaic.config import RunConfig
from fedmosaic.models.missing_modality import removals_from_metrics, remove_each_modality
from fedmosaic.server.validation import ReplyContract, check_evaluation
from fedmosaic.task import build_model, cached_dataset

RUN_CONFIG = {"local-epochs": 1, "num-clients": 10}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def context(partition_id=2):
    config = RunConfig.from_mapping(RUN_CONFIG).to_mapping()
    return Context(run_id=1, node_id=5, node_config={"partition-id": partition_id},
                   state=RecordDict(), run_config=config)


def global_arrays():
    config = RunConfig.from_mapping(RUN_CONFIG)
    return ArrayRecord(build_model(config, cached_dataset(config)).state_dict())


def message(kind, config=None):
    content = RecordDict({records.ARRAYS: global_arrays(),
                          records.CONFIG: ConfigRecord(config or {})})
    return Message(content=content, dst_node_id=5, message_type=kind)


def test_train_reply_has_updated_arrays_and_metrics():
    reply = train_locally(message("train", {records.LEARNING_RATE: 0.003,
                                            records.SERVER_ROUND: 1}), context())

    metrics = reply.content[records.METRICS]
    config = RunConfig.from_mapping(RUN_CONFIG)
    train_arrays, _ = cached_dataset(config).partition(2)
    assert metrics[records.NUM_EXAMPLES] == len(train_arrays)
    assert np.isfinite(metrics[records.TRAIN_LOSS])
    assert metrics[records.EMBEDDING_VARIANCE] > 0
    sent = global_arrays().to_torch_state_dict()
    got = reply.content[records.ARRAYS].to_torch_state_dict()
    assert got.keys() == sent.keys()
    assert any(not torch.equal(got[k], sent[k]) for k in sent)


def test_fedprox_mu_keeps_the_update_closer_to_the_global_model():
    def distance(reply):
        sent = global_arrays().to_torch_state_dict()
        got = reply.content[records.ARRAYS].to_torch_state_dict()
        return sum(float((got[k].float() - sent[k].float()).pow(2).sum()) for k in sent)

    free = train_locally(message("train", {records.SERVER_ROUND: 1}), context())
    held = train_locally(message("train", {records.SERVER_ROUND: 1, records.PROXIMAL_MU: 50.0}),
                         context())

    assert distance(held) < 0.5 * distance(free)


def test_evaluate_reply_reports_local_accuracy():
    reply = evaluate_locally(message("evaluate"), context(partition_id=0))

    metrics = reply.content[records.METRICS]
    assert 0.0 <= metrics[records.EVAL_ACCURACY] <= 1.0
    assert metrics[records.NUM_EXAMPLES] > 0


def test_evaluate_reply_says_what_removing_each_modality_costs_and_meets_the_contract():
    config = RunConfig.from_mapping(RUN_CONFIG)
    dataset = cached_dataset(config)
    names = [spec.name for spec in dataset.specs]

    reply = evaluate_locally(message("evaluate"), context(partition_id=0))

    check_evaluation(reply, ReplyContract.for_evaluation(config, names))
    metrics = reply.content[records.METRICS]
    model = build_model(config, dataset)
    model.load_state_dict(global_arrays().to_torch_state_dict())
    expected = remove_each_modality(model, dataset.partition(0)[1], dataset.specs)
    assert expected and removals_from_metrics(metrics, names) == expected


def test_missing_partition_id_is_a_clear_error():
    bad = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(),
                  run_config=RunConfig.from_mapping(RUN_CONFIG).to_mapping())

    with pytest.raises(ValueError, match="node config needs 'partition-id'"):
        train_locally(message("train"), bad)


def test_train_reply_declares_dataset_size_and_held_modalities():
    reply = train_locally(message("train", {records.SERVER_ROUND: 1}), context())

    metrics = reply.content[records.METRICS]
    assert metrics[records.DATASET_SIZE] == metrics[records.NUM_EXAMPLES]
    assert metrics[records.MODALITIES_HELD] == [1, 1]  # smartwatch: both sensors everywhere


def test_a_malicious_device_sends_the_sign_flipped_update():
    attacked = {**RUN_CONFIG, "attack": "sign-flip", "malicious-fraction": 0.1}
    (partition,) = malicious_partitions(10, 0.1, seed=0)
    honest_context, bad_context = context(partition), context(partition)
    bad_context.run_config.update(RunConfig.from_mapping(attacked).to_mapping())

    honest = train_locally(message("train", {records.SERVER_ROUND: 1}), honest_context)
    flipped = train_locally(message("train", {records.SERVER_ROUND: 1}), bad_context)

    sent = global_arrays().to_torch_state_dict()
    honest_w = honest.content[records.ARRAYS].to_torch_state_dict()
    flipped_w = flipped.content[records.ARRAYS].to_torch_state_dict()
    for key in sent:
        torch.testing.assert_close(flipped_w[key], 2 * sent[key] - honest_w[key])
