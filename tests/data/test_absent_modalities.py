import numpy as np

from fedmosaic.config import RunConfig
from fedmosaic.data.absent_modalities import absent_modality, as_held
from fedmosaic.task import cached_dataset


def test_the_share_of_devices_lacking_a_modality_is_drawn_from_the_seed():
    config = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 0.5})

    lacking = {p: absent_modality(config, 2, p) for p in range(10)}

    assert sum(column is not None for column in lacking.values()) == 5
    assert all(column in (None, 0, 1) for column in lacking.values())
    assert lacking == {p: absent_modality(config, 2, p) for p in range(10)}  # reproducible
    other = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 0.5,
                                    "seed": 1})
    assert lacking != {p: absent_modality(other, 2, p) for p in range(10)}
    assert all(absent_modality(RunConfig.from_mapping({}), 2, p) is None for p in range(10))


def test_a_device_lacking_a_modality_holds_none_of_it():
    config = RunConfig.from_mapping({"num-clients": 10, "missing-modality-devices": 1.0})
    dataset = cached_dataset(config)
    for partition in range(3):
        train, _ = dataset.partition(partition)
        held = as_held(config, train, partition)
        column = absent_modality(config, 2, partition)
        assert not held.mask[:, column].any() and held.mask.any(axis=1).all()
        assert np.array_equal(held.labels, train.labels)  # two modalities: every sample kept
