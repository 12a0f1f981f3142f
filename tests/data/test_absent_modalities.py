import numpy as np
import pytest

from fedmosaic.config import RunConfig
from fedmosaic.data.absent_modalities import absent_modality, as_held
from fedmosaic.task import cached_dataset

SPECS = cached_dataset(RunConfig.from_mapping({})).specs


def test_the_share_of_devices_lacking_a_modality_is_drawn_from_the_seed():
    config = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 0.5})

    lacking = {p: absent_modality(config, SPECS, p) for p in range(10)}

    assert sum(column is not None for column in lacking.values()) == 5
    assert all(column in (None, 0, 1) for column in lacking.values())
    assert lacking == {p: absent_modality(config, SPECS, p) for p in range(10)}  # reproducible
    other = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 0.5,
                                    "seed": 1})
    assert lacking != {p: absent_modality(other, SPECS, p) for p in range(10)}
    assert all(absent_modality(RunConfig.from_mapping({}), SPECS, p) is None for p in range(10))


def test_a_device_lacking_a_modality_holds_none_of_it():
    config = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 1.0})
    dataset = cached_dataset(config)
    for partition in range(3):
        train, _ = dataset.partition(partition)
        held = as_held(config, train, partition, dataset.specs)
        column = absent_modality(config, dataset.specs, partition)
        assert not held.mask[:, column].any() and held.mask.any(axis=1).all()
        assert np.array_equal(held.labels, train.labels)  # two modalities: every sample kept


def test_a_named_modality_is_the_one_every_lacking_device_lacks():
    config = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 0.5,
                                     "missing-modality-name": SPECS[1].name})
    drawn = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 0.5})

    lacking = {p: absent_modality(config, SPECS, p) for p in range(10)}

    assert {p for p, c in lacking.items() if c is not None} == {
        p for p in range(10) if absent_modality(drawn, SPECS, p) is not None}  # same devices
    assert {c for c in lacking.values() if c is not None} == {1}


def test_an_unknown_modality_name_is_refused_with_the_names_there_are():
    config = RunConfig.from_mapping({"missing-modality-name": "thermometer"})

    with pytest.raises(ValueError, match="must be one of the dataset's modalities .*thermometer"):
        absent_modality(config, SPECS, 0)
