
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedmosaic import records
from fedmosaic.clients.poisoning import ClientAttack, flip_labels, malicious_partitions
from fedmosaic.config import RunConfig
from fedmosaic.data.modality import MultimodalArrays


def test_malicious_partitions_are_fixed_by_the_seed():
    first = malicious_partitions(50, 0.3, seed=4)

    assert len(first) == 15
    assert first == malicious_partitions(50, 0.3, seed=4)
    assert first != malicious_partitions(50, 0.3, seed=5)
    assert malicious_partitions(10, 0.0, seed=4) == frozenset()
    assert first <= set(range(50))


@pytest.mark.parametrize(("args", "message"), [
    ((0, 0.1, 0), "num_clients must be >= 1, got 0"),
    ((10, 1.0, 0), r"fraction must lie in \[0, 1\), got 1.0"),
    ((10, -0.1, 0), r"fraction must lie in \[0, 1\), got -0.1"),
])
def test_bad_attack_settings_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        malicious_partitions(*args)


def test_label_flip_maps_each_label_to_its_mirror():
    arrays = MultimodalArrays(inputs={"x": np.zeros((3, 1))}, mask=np.ones((3, 1), bool),
                              labels=np.array([0, 2, 6]))

    assert flip_labels(arrays, 7).labels.tolist() == [6, 4, 0]


def test_only_the_chosen_partitions_misbehave():
    config = RunConfig.from_mapping({"attack": "sign-flip", "malicious-fraction": 0.3})
    bad = malicious_partitions(10, 0.3, 0)

    behaviours = [ClientAttack.for_partition(config, p).attack for p in range(10)]

    assert [p for p, b in enumerate(behaviours) if b == "sign-flip"] == sorted(bad)
    assert behaviours.count("none") == 7


def test_attackers_appear_from_the_start_round_on():
    config = RunConfig.from_mapping({"attack": "burst", "malicious-fraction": 0.3,
                                     "attack-start-round": 4})
    bad = min(malicious_partitions(10, 0.3, 0))

    assert [ClientAttack.for_partition(config, bad, r).attack for r in (1, 3, 4, 9)] == [
        "none", "none", "burst", "burst"]
    with pytest.raises(ValueError, match="attack-start-round must be >= 1"):
        RunConfig.from_mapping({"attack-start-round": 0})


@pytest.mark.parametrize(("attack", "expected"), [
    ("none", [3.0, 5.0]),        # w as trained
    ("sign-flip", [-1.0, -3.0]),  # w_g - (w - w_g) with w_g = 1, w = (3, 5)
    ("scale-10", [21.0, 41.0]),  # w_g + 10 (w - w_g)
    ("scale-100", [201.0, 401.0]),
])
def test_local_model_poisoning_rewrites_the_trained_weights(attack, expected):
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.data = torch.tensor([[3.0, 5.0]])
    global_arrays = ArrayRecord({"weight": torch.ones(1, 2)})

    ClientAttack(attack, seed=0, partition_id=1).poison_model(model, global_arrays, 1)

    assert model.weight.data[0].tolist() == expected


def test_gaussian_and_nan_payloads():
    global_arrays = ArrayRecord({"weight": torch.zeros(1, 200)})
    noisy, again, garbage = (torch.nn.Linear(200, 1, bias=False) for _ in range(3))

    ClientAttack("gaussian", seed=0, partition_id=1).poison_model(noisy, global_arrays, 3)
    ClientAttack("gaussian", seed=0, partition_id=1).poison_model(again, global_arrays, 3)
    ClientAttack("nan", seed=0, partition_id=1).poison_model(garbage, global_arrays, 3)

    assert torch.equal(noisy.weight, again.weight)  # drawn from (seed, partition, round)
    assert noisy.weight.std().item() == pytest.approx(1.0, abs=0.15)
    assert torch.isnan(garbage.weight).all()


def test_only_colluding_attackers_tag_their_reply():
    assert ClientAttack("alie", seed=0, partition_id=1).reply_metrics() == {
        records.ATTACKER_TAG: 1}
    assert ClientAttack("sign-flip", seed=0, partition_id=1).reply_metrics() == {}


def test_channel_attacks_delay_or_pad_an_honest_reply(monkeypatch):
    from flwr.app import MetricRecord, RecordDict

    from fedmosaic.clients import poisoning

    slept = []
    monkeypatch.setattr(poisoning.time, "sleep", slept.append)
    honest = {records.NUM_EXAMPLES: 5}

    delayed = RecordDict({records.METRICS: MetricRecord(dict(honest))})
    ClientAttack("delay", 0, 1).tamper_reply(delayed)
    padded = RecordDict({records.METRICS: MetricRecord(dict(honest))})
    ClientAttack("burst", 0, 1).tamper_reply(padded)
    untouched = RecordDict({records.METRICS: MetricRecord(dict(honest))})
    ClientAttack("none", 0, 1).tamper_reply(untouched)

    assert slept == [poisoning.DELAY_SECONDS]
    assert dict(delayed[records.METRICS]) == honest and list(delayed) == [records.METRICS]
    assert len(padded["padding"]["padding"]) == poisoning.BURST_BYTES
    assert list(untouched) == [records.METRICS]
