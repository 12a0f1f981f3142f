"""Public pretraining reads only the donors' data; the donors are left out of every evaluation."""

import numpy as np
import pytest
import torch
from flwr_datasets.partitioner import IidPartitioner

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import from_arrays
from fedmosaic.data.smartwatch import SmartwatchDataset
from fedmosaic.models.encoders import SensorFeatureEncoder
from fedmosaic.privacy.anonymizer.reframe import reframe
from fedmosaic.server import public_pretraining
from fedmosaic.server.public_pretraining import pretrain_on_public_devices
from fedmosaic.task import build_model, cached_dataset


class Spy:
    """A dataset that records which partitions were read."""

    def __init__(self, dataset):
        self._dataset, self.read = dataset, []

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def partition(self, partition_id):
        self.read.append(partition_id)
        return self._dataset.partition(partition_id)


def test_pretraining_reads_only_the_public_devices_and_moves_the_model():
    config = RunConfig.from_mapping({"num-clients": 6, "unseen-devices": 2,
                                     "public-devices": 2, "pretrain-epochs": 1})
    dataset = Spy(cached_dataset(config))
    model = build_model(config, dataset)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    done = pretrain_on_public_devices(config, dataset, model)

    assert dataset.read == [8, 9] == done["partitions"]
    assert done["samples"] == sum(len(dataset.partition(p)[0]) for p in (8, 9))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reframed_pretraining_augments_every_batch_reproducibly(monkeypatch):
    settings = {"num-clients": 6, "unseen-devices": 2, "public-devices": 2,
                "pretrain-epochs": 1, "pretrain-reframe": 0.5}
    config = RunConfig.from_mapping(settings)
    dataset = cached_dataset(config)
    strengths, outputs = [], []

    def spy(inputs, mask, specs, strength, generator):
        strengths.append(strength)
        outputs.append(reframe(inputs, mask, specs, strength, generator))
        return outputs[-1]

    monkeypatch.setattr(public_pretraining, "reframe", spy)
    done = [pretrain_on_public_devices(config, dataset, build_model(config, dataset))
            for _ in range(2)]
    pretrain_on_public_devices(RunConfig.from_mapping({**settings, "pretrain-reframe": 0.0}),
                               dataset, build_model(config, dataset))

    batches = -(-done[0]["samples"] // config.batch_size)
    assert len(strengths) == 2 * batches  # every batch of both runs, none in the plain one
    assert all(0.0 <= float(s.min()) and float(s.max()) < 0.5 for s in strengths)
    assert done[0]["reframe"] == 0.5
    for first, second in ((strengths[:batches], strengths[batches:]),
                          (outputs[:batches], outputs[batches:])):  # drawn from the run's seed
        assert all(_equal(a, b) for a, b in zip(first, second, strict=True))


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


@pytest.mark.parametrize(("settings", "message"), [
    ({"pretrain-epochs": 1, "pretrain-reframe": 1.5}, r"must lie in \[0, 1\], got 1.5"),
    ({"pretrain-epochs": 1, "pretrain-reframe": -0.1}, r"must lie in \[0, 1\], got -0.1"),
    ({"pretrain-reframe": 1.0}, "augments the public pretraining: set pretrain-epochs >= 1"),
])
def test_pretrain_reframe_out_of_range_or_without_pretraining_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping({"public-devices": 2, **settings})


def test_the_smartwatch_central_test_drops_the_donors_subjects():
    dataset = SmartwatchDataset()
    everyone = dataset.central_test()

    without = dataset.central_test_without([8, 9])

    donors = {dataset.subject_of(8), dataset.subject_of(9)}
    kept = ~np.isin(dataset._test_subjects, list(donors))
    assert len(without) == kept.sum() < len(everyone)
    assert np.array_equal(without.labels, everyone.labels[kept])
    assert len(dataset.central_test_without([])) == len(everyone)


def test_a_dataset_that_cannot_drop_donors_from_its_test_set_says_so():
    config = RunConfig.from_mapping({"dataset": "synthetic", "num-clients": 2})
    synthetic = cached_dataset(config)
    assert len(synthetic.central_test_without([1])) == len(synthetic.central_test())
    arrays = synthetic.partition(0)[0]
    generic = from_arrays(arrays, arrays, synthetic.specs, synthetic.num_classes,
                          IidPartitioner(num_partitions=2))
    with pytest.raises(ValueError, match="cannot leave partitions \\[1\\] out"):
        generic.central_test_without([1])


def test_the_fixed_features_do_not_depend_on_the_seed():
    windows = torch.randn(4, 3, 100)
    torch.manual_seed(0)
    first = SensorFeatureEncoder(3, 100, 16)
    torch.manual_seed(1)
    second = SensorFeatureEncoder(3, 100, 16)

    assert torch.equal(first.features(windows), second.features(windows))
    assert not torch.equal(first(windows), second(windows))  # only the projection is learned


def test_pretrain_epochs_without_public_devices_is_refused():
    with pytest.raises(ValueError, match="set public-devices >= 1"):
        RunConfig.from_mapping({"pretrain-epochs": 5})


@pytest.mark.parametrize(("settings", "message"), [
    ({"personalization": "local-gate", "fusion": "concat"}, "fusion=concat has none"),
    ({"personalization": "fedbn", "fine-tune": "top"}, "fine-tune=top never trains"),
    ({"personalization": "fedbn", "fine-tune": "head"}, "fine-tune=head never trains"),
    ({"personalization": "fedrep", "fine-tune": "head"}, "no shared part would train"),
    ({"personalization": "local-gate", "fine-tune": "head"}, "gates, which fine-tune=head"),
    ({"modality-dropout": 1.0}, r"modality-dropout must lie in \[0, 1\)"),
    ({"unseen-devices": -1}, "unseen-devices must be >= 0"),
])
def test_combinations_that_cannot_work_are_refused_up_front(settings, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping(settings)
