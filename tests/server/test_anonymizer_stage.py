"""The anonymizer's server stage and federated rounds: what goes out, what comes back."""

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.data.smartwatch import smartwatch_specs
from fedmosaic.privacy.anonymization import check_release
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.anonymizer.training import AnonymizerModels, AnonymizerTraining
from fedmosaic.server.anonymizer_rounds import check_anonymizer_reply
from fedmosaic.server.anonymizer_stage import QUASI_IDENTIFIERS, AnonymizerStage
from fedmosaic.server.validation import RejectedUpdate

SPECS = smartwatch_specs(0.5)


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


class Inner:
    """Hands out one shared content to nodes 7 and 8; records what it aggregates."""

    def __init__(self):
        self.shared = RecordDict({records.CONFIG: ConfigRecord({records.LEARNING_RATE: 0.1})})
        self.aggregated = None

    def configure_train(self, server_round, arrays, config, grid):
        return [Message(content=self.shared, dst_node_id=n, message_type="train")
                for n in (7, 8)]

    def aggregate_train(self, server_round, replies):
        self.aggregated = list(replies)
        return None, None


def stage(tmp_path, k=2):
    torch.manual_seed(0)
    return AnonymizerStage(Inner(), MultimodalAnonymizer(SPECS, token_dim=8),
                           AnonymizerKnobs(strength=0.8), num_classes=7,
                           release_dir=tmp_path / "releases", release_k=k, most=4)


def reply(node, labels, name, extra=None):
    count = len(labels)
    release = {s.name: Array(np.zeros((count, *s.shape), np.float32)) for s in SPECS}
    release |= {"mask": Array(np.ones((count, len(SPECS)), bool)),
                "labels": Array(np.asarray(labels, np.int64))}
    sent = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({records.ARRAYS: ArrayRecord({"w": Array(np.ones(2, np.float32))}),
                          records.METRICS: MetricRecord({records.NUM_EXAMPLES: 5}),
                          records.RELEASE: ArrayRecord(release),
                          records.RELEASE_META: ConfigRecord({records.PSEUDONYM: name}),
                          **(extra or {})})
    message = Message(content=content, reply_to=sent)
    message.metadata.__dict__["_src_node_id"] = node
    return message


def test_every_message_carries_the_generator_and_its_own_knobs(tmp_path):
    anonymizer = stage(tmp_path)
    anonymizer.set_knobs(8, AnonymizerKnobs(strength=0.2, noise=1.0))

    messages = list(anonymizer.configure_train(1, ArrayRecord(), ConfigRecord(), None))

    knobs = {m.metadata.dst_node_id: dict(m.content[records.ANONYMIZER_KNOBS])
             for m in messages}
    assert knobs == {7: {"strength": 0.8, "noise": 0.0, "discard": 0.0, "reframe": 0.0},
                     8: {"strength": 0.2, "noise": 1.0, "discard": 0.0, "reframe": 0.0}}
    for message in messages:
        assert list(message.content[records.ANONYMIZER]) == list(
            anonymizer.generator_arrays)
        assert message.content[records.CONFIG][records.LEARNING_RATE] == 0.1
    assert records.ANONYMIZER not in anonymizer.strategy.shared  # the shared content is intact


def test_releases_are_taken_out_k_anonymized_and_written(tmp_path):
    anonymizer = stage(tmp_path, k=2)
    replies = [reply(7, [0, 0, 1, 3], "a" * 64), reply(8, [0, 1, 2], "b" * 64)]

    anonymizer.aggregate_train(4, replies)

    # label 0: 3 records from 2 devices, label 1: 2 from 2 -> kept; labels 2, 3: one each
    assert anonymizer.round_releases(4) == {"released": 5, "release_suppressed": 2,
                                            "release_rejected": 0}
    for passed in anonymizer.strategy.aggregated:
        assert list(passed.content.keys()) == [records.ARRAYS, records.METRICS]
    table = pd.read_csv(tmp_path / "releases" / "round-004.csv")
    data = np.load(tmp_path / "releases" / "round-004.npz")
    assert sorted(table["label"]) == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(data["labels"], table["label"])
    assert data["accelerometer"].shape == (5, *SPECS[0].shape)
    check_release(table, QUASI_IDENTIFIERS, 2, sensitive="pseudonym", l_distinct=2)


def broken_releases():
    """Releases a device may send that must be dropped, one per way of breaking it."""
    shape = reply(7, [0, 1], "a")
    shape.content[records.RELEASE]["accelerometer"] = Array(np.zeros((2, 3, 7), np.float32))
    nameless = reply(8, [0], "b")
    nameless.content[records.RELEASE_META] = ConfigRecord({"other": 1})
    too_many = reply(7, [0] * 5, "c")  # anonymizer-release is 4
    scalar = reply(7, [0], "d")
    scalar.content[records.RELEASE]["labels"] = Array(np.array(3, np.int64))
    matrix = reply(7, [0, 1], "e")
    matrix.content[records.RELEASE]["labels"] = Array(np.zeros((2, 2), np.int64))
    floats = reply(7, [0, 1], "f")
    floats.content[records.RELEASE]["labels"] = Array(np.array([0.5, 1.5]))
    words = reply(7, [0, 1], "g")
    words.content[records.RELEASE]["labels"] = Array(np.array(["a", "b"]))
    outside = reply(7, [0, 9], "h")  # 7 classes
    mask = reply(7, [0], "i")
    mask.content[records.RELEASE]["mask"] = Array(np.ones((1, 2), np.float32))
    return [shape, nameless, too_many, scalar, matrix, floats, words, outside, mask]


def test_a_malformed_release_is_dropped_and_counted_while_the_update_goes_on(tmp_path):
    anonymizer = stage(tmp_path)
    broken = broken_releases()

    anonymizer.aggregate_train(1, broken)

    assert anonymizer.rejections.reasons(1) == {"release": len(broken)}
    assert anonymizer.round_releases(1)["release_rejected"] == len(broken)
    assert len(anonymizer.strategy.aggregated) == len(broken)
    for passed in anonymizer.strategy.aggregated:
        assert records.RELEASE not in passed.content
    assert not (tmp_path / "releases").exists()


def anonymizer_reply(state, metrics):
    sent = Message(content=RecordDict(), dst_node_id=3, message_type="train.anonymizer")
    content = RecordDict({records.ANONYMIZER_MODELS: ArrayRecord(state),
                          records.METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=sent)


def test_anonymizer_replies_are_validated_like_model_updates():
    models = AnonymizerModels(SPECS, 10, 7, AnonymizerTraining(token_dim=8))
    reference = {k: v.numpy() for k, v in models.state_dict().items()}
    buffers = [name for name, _ in models.named_buffers()]
    good = {records.NUM_EXAMPLES: 40, records.ADVERSARY_ACCURACY: 0.5,
            records.UTILITY_ACCURACY: 0.5}
    check_anonymizer_reply(anonymizer_reply(models.state_dict(), good), reference, 100, buffers)

    poisoned = {k: v.clone() for k, v in models.state_dict().items()}
    first = next(iter(poisoned))
    poisoned[first][...] = float("nan")
    silenced = {k: v.clone() for k, v in models.state_dict().items()}
    silenced["generator.code_noise"] = torch.tensor(0.0)  # would remove the bottleneck's noise
    cases = [
        (anonymizer_reply(poisoned, good), "non-finite"),
        (anonymizer_reply(models.state_dict(), {**good, records.NUM_EXAMPLES: 101}),
         "num-examples"),
        (anonymizer_reply(models.state_dict(), {**good, records.NUM_EXAMPLES: 10**6}),
         "num-examples"),
        (anonymizer_reply(models.state_dict(), {**good, records.ADVERSARY_ACCURACY: 3.0}),
         "metrics"),
        (anonymizer_reply(models.state_dict(), {**good, records.UTILITY_ACCURACY: [0.5]}),
         "metrics"),
        (anonymizer_reply(models.state_dict(), {**good, "injected": 1.0}), "metrics"),
        (anonymizer_reply({"w": torch.zeros(2)}, good), "keys"),
        (anonymizer_reply(silenced, good), "malformed"),
    ]
    assert "generator.code_noise" in buffers
    for message, reason in cases:
        with pytest.raises(RejectedUpdate) as caught:
            check_anonymizer_reply(message, reference, 100, buffers)
        assert caught.value.reason == reason
