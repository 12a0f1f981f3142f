import numpy as np
import pytest

from fedmosaic.config import RunConfig
from fedmosaic.data.smartwatch import (
    NUM_CLASSES,
    SmartwatchDataset,
    smartwatch_dataset,
    window_length,
)


@pytest.fixture(scope="module")
def dataset():
    return SmartwatchDataset(window_seconds=2.0)


def test_ten_subject_partitions_with_two_sensor_modalities(dataset):
    assert dataset.num_partitions == 10
    assert [s.name for s in dataset.specs] == ["accelerometer", "gyroscope"]
    assert dataset.specs[0].shape == (3, 100)


def test_each_partition_is_one_subject_with_its_own_held_out_windows(dataset):
    subjects = [dataset.subject_of(p) for p in range(10)]

    assert sorted(subjects) == list(range(10))
    for partition_id in range(10):
        train, test = dataset.partition(partition_id)
        train.validate(dataset.specs, NUM_CLASSES)
        test.validate(dataset.specs, NUM_CLASSES)
        assert len(train) > 100 and len(test) > 20
        assert set(np.unique(train.labels)) == set(range(NUM_CLASSES))


def test_central_test_is_the_union_of_local_test_sets(dataset):
    local = sum(len(dataset.partition(p)[1]) for p in range(10))

    assert len(dataset.central_test()) == local


def test_training_windows_are_standardised(dataset):
    train = np.concatenate([dataset.partition(p)[0].inputs["accelerometer"] for p in range(10)])

    np.testing.assert_allclose(train.mean(axis=(0, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(train.std(axis=(0, 2)), 1.0, atol=1e-2)


def test_more_clients_than_subjects_is_rejected():
    with pytest.raises(ValueError, match=r"public-devices must be at most 10, got 11 \+ 0 \+ 0"):
        smartwatch_dataset(RunConfig.from_mapping({"num-clients": 11}))


def test_window_too_short_is_rejected():
    with pytest.raises(ValueError, match="window-seconds must give >= 8 samples"):
        window_length(0.1)
