import json
import math

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedmosaic.config import RunConfig
from fedmosaic.server.validation import (
    RejectedUpdate,
    ValidatingStrategy,
    update_norm,
    update_validator,
    validate_update,
)
from fedmosaic.simulation.inprocess import run_in_process

REFERENCE = {"w": np.zeros(2, dtype=np.float32), "b": np.ones(1, dtype=np.float32)}
GOOD = {"w": np.array([3.0, 4.0], dtype=np.float32), "b": np.ones(1, dtype=np.float32)}


def with_value(name, value):
    return {**GOOD, name: value}


def test_a_sound_update_passes_and_its_norm_is_the_distance_to_the_reference():
    validate_update(GOOD, REFERENCE, 10, metrics={"train-loss": 0.5, "held": [1, 0]},
                    declared_examples=10, max_norm=5.0)  # ||(3, 4)|| = 5 is within the bound

    assert update_norm(GOOD, REFERENCE) == pytest.approx(5.0)


MALFORMED = [
    # (update, num_examples, keyword arguments, reason)
    ({"w": GOOD["w"]}, 10, {}, "keys"),
    ({"b": GOOD["b"], "w": GOOD["w"]}, 10, {}, "keys"),
    (with_value("w", np.zeros(3, dtype=np.float32)), 10, {}, "shape"),
    (with_value("w", np.zeros(2, dtype=np.float64)), 10, {}, "dtype"),
    (with_value("w", np.array([np.nan, 0.0], dtype=np.float32)), 10, {}, "non-finite"),
    (with_value("b", np.array([np.inf], dtype=np.float32)), 10, {}, "non-finite"),
    (GOOD, 0, {}, "num-examples"),
    (GOOD, -3, {}, "num-examples"),
    (GOOD, 2.5, {}, "num-examples"),
    (GOOD, "10", {}, "num-examples"),
    (GOOD, math.nan, {}, "num-examples"),
    (GOOD, 11, {"declared_examples": 10}, "num-examples"),
    (GOOD, 10, {"metrics": {"train-loss": math.nan}}, "metrics"),
    (GOOD, 10, {"metrics": {"held": [1.0, math.inf]}}, "metrics"),
    (GOOD, 10, {"max_norm": 4.99}, "norm"),
]


@pytest.mark.parametrize(("update", "num_examples", "kwargs", "reason"), MALFORMED)
def test_malformed_updates_are_rejected_with_their_reason(update, num_examples, kwargs, reason):
    with pytest.raises(RejectedUpdate) as caught:
        validate_update(update, REFERENCE, num_examples, **kwargs)

    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)
    assert "dropped" in str(caught.value)


def test_the_wrapper_drops_bad_replies_counts_them_and_averages_the_rest(train_reply, caplog):
    strategy = ValidatingStrategy(FedAvg(), max_norm=10.0)
    strategy._reference = {1: REFERENCE}
    replies = [
        train_reply(GOOD, {"num-examples": 2, "dataset-size": 2}, node=1),
        train_reply({"w": np.array([1.0, 0.0], np.float32), "b": np.ones(1, np.float32)},
                    {"num-examples": 2, "dataset-size": 2}, node=2),
        train_reply(with_value("w", np.array([np.nan, 0], np.float32)),
                    {"num-examples": 2}, node=3),
        train_reply(with_value("w", np.array([100.0, 0], np.float32)),
                    {"num-examples": 2}, node=4),
        train_reply(GOOD, {"train-loss": 1.0}, node=5),
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays["w"].numpy(), [2.0, 2.0])  # mean of (3, 4) and (1, 0)
    assert strategy.rejections.count(1) == 3
    assert strategy.rejections.reasons(1) == {"non-finite": 1, "norm": 1, "num-examples": 1}
    assert "rejected the update of node 3" in caplog.text


def test_a_node_cannot_claim_more_examples_than_it_first_declared(train_reply):
    strategy = ValidatingStrategy(FedAvg())
    strategy._reference = {1: REFERENCE, 2: REFERENCE}
    strategy.aggregate_train(1, [train_reply(GOOD, {"num-examples": 5, "dataset-size": 5})])

    result = strategy.aggregate_train(
        2, [train_reply(GOOD, {"num-examples": 500, "dataset-size": 500})])

    assert result == (None, None)
    assert strategy.rejections.reasons(2) == {"num-examples": 1}


def test_too_few_valid_replies_skip_the_round(train_reply):
    strategy = ValidatingStrategy(FedAvg(), min_replies=2)
    strategy._reference = {3: REFERENCE}
    replies = [train_reply(GOOD, {"num-examples": 4}, node=1),
               train_reply({"w": GOOD["w"]}, {"num-examples": 4}, node=2)]

    assert strategy.aggregate_train(3, replies) == (None, None)
    assert strategy.rejections.count(3) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_replies": 0}, "min_replies must be >= 1, got 0"),
    ({"max_norm": 0.0}, "max_norm must be > 0"),
    ({"max_norm": -1.0}, "max_norm must be > 0"),
])
def test_wrapper_settings_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ValidatingStrategy(FedAvg(), **kwargs)


def test_replies_without_their_records_are_malformed(train_reply):
    strategy = ValidatingStrategy(FedAvg())
    strategy._reference = {1: REFERENCE}
    empty = Message(content=RecordDict(), reply_to=train_reply(GOOD, {"num-examples": 1}))

    assert strategy.aggregate_train(1, [empty]) == (None, None)
    assert strategy.rejections.reasons(1) == {"malformed": 1}


def test_the_run_config_bound_reaches_the_edge_validator():
    bounded = update_validator(RunConfig.from_mapping({"max-update-norm": 4.0}))
    unbounded = update_validator(RunConfig.from_mapping({}))

    unbounded(GOOD, REFERENCE, 3)  # norm 5, no bound
    with pytest.raises(RejectedUpdate, match="must be <= 4.0, got 5"):
        bounded(GOOD, REFERENCE, 3)


def test_a_run_records_rejections_and_skips_a_round_without_enough_valid_replies(tmp_path):
    # 3 devices, one sends NaN (round(0.34 * 3) = 1); all 3 are needed to aggregate
    config = run_in_process({"num-clients": 3, "num-server-rounds": 1, "local-epochs": 1,
                             "attack": "nan", "malicious-fraction": 0.34,
                             "min-valid-replies": 3, "fraction-evaluate": 0.0,
                             "out-dir": str(tmp_path), "run-name": "nan"})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["history"][0]["rejected"] == 1
    assert summary["final_accuracy"] == summary["initial_accuracy"]  # global model unchanged
