import dataclasses

import numpy as np
import pytest
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import from_arrays, load_dataset
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.data.report import (
    IID_TV_LIMIT,
    DevicePartition,
    partition_report,
    partition_warnings,
)

SPECS = (ModalitySpec("temp", ModalityKind.SENSOR, (1, 4)),
         ModalitySpec("log", ModalityKind.TOKENS, (3,), vocab_size=5))
CLASSES = 5


def sorted_pool(per_class=60):
    """A pool stored sorted by label, as data usually is."""
    labels = np.repeat(np.arange(CLASSES), per_class)
    n = len(labels)
    mask = np.ones((n, 2), dtype=bool)
    mask[:, 1] = False  # nobody holds the log modality
    return MultimodalArrays(
        inputs={"temp": np.random.default_rng(0).normal(size=(n, 1, 4)).astype(np.float32),
                "log": np.zeros((n, 3), np.int64)},
        mask=mask, labels=labels)


def dataset(partitioner, seed=0, **kwargs):
    data = from_arrays(sorted_pool(), sorted_pool(4), SPECS, CLASSES, partitioner,
                       columns={"site": np.arange(len(sorted_pool())) % 3}, **kwargs)
    data.bind(seed, 0.2)
    return data


def total_variation(report):
    pool = np.sum([d.label_counts for d in report.devices], axis=0) / sum(
        d.train_samples for d in report.devices)
    return [0.5 * np.abs(np.asarray(d.label_counts) / d.train_samples - pool).sum()
            for d in report.devices]


def test_a_sorted_pool_split_iid_gives_every_device_the_pools_labels():
    report = partition_report(dataset(IidPartitioner(num_partitions=5)))

    assert max(total_variation(report)) < IID_TV_LIMIT
    assert all(min(d.label_counts) > 0 for d in report.devices)
    assert [w for w in partition_warnings(report) if "far from" in w] == []


def test_unshuffled_the_same_split_is_flagged_device_by_device():
    report = partition_report(dataset(IidPartitioner(num_partitions=5), shuffle=False))

    warnings = partition_warnings(report)

    assert min(total_variation(report)) > 0.7  # contiguous chunks of a sorted pool
    assert sum("far from the pool's under IidPartitioner" in w for w in warnings) == 5
    assert sum("holds one class only" in w for w in warnings) == 5


def test_dirichlet_skew_follows_alpha_and_natural_ids_keep_their_rows():
    mild = partition_report(dataset(DirichletPartitioner(
        num_partitions=4, partition_by="label", alpha=1000.0, seed=0, min_partition_size=5)))
    skewed = partition_report(dataset(DirichletPartitioner(
        num_partitions=4, partition_by="label", alpha=0.1, seed=0, min_partition_size=5)))
    natural = dataset(NaturalIdPartitioner(partition_by="site"))

    assert np.mean(total_variation(mild)) < 0.15 < np.mean(total_variation(skewed))
    sites = np.arange(len(sorted_pool())) % 3
    for site in range(3):
        train, test = natural.partition(site)
        assert len(train) + len(test) == int((sites == site).sum())


def test_a_modality_no_device_holds_and_an_empty_device_are_warned_about():
    report = partition_report(dataset(IidPartitioner(num_partitions=4)))
    empty = DevicePartition(4, 0, 0, [0] * CLASSES, [0, 0])

    warnings = partition_warnings(dataclasses.replace(report, devices=[*report.devices, empty]))

    assert "modality 'log' is held by no device" in warnings
    assert "device 4 has no training sample" in warnings
    assert report.to_dict()["devices"][0]["modalities_held"][1] == 0
    assert report.table().splitlines()[0].startswith("partitions (IidPartitioner; 4 of 4")


def test_a_partition_the_partitioner_cannot_make_is_a_clear_error():
    with pytest.raises(ValueError, match=r"partition 300 of 400 could not be made"):
        partition_report(dataset(IidPartitioner(num_partitions=400)))  # 300 rows


def test_the_run_config_gives_the_seed_and_the_local_test_fraction():
    def load(**overrides):
        config = RunConfig.from_mapping({"dataset": "my_sensor_dataset:load",
                                         "num-clients": 3, **overrides})
        return load_dataset(config).partition(0)

    same, again = load(seed=3), load(seed=3)
    other = load(seed=4)
    half = load(**{"local-test-fraction": 0.5})

    assert np.array_equal(same[0].labels, again[0].labels)
    assert not np.array_equal(same[0].inputs["thermal"], other[0].inputs["thermal"])
    assert abs(len(half[1]) - len(half[0])) <= 1  # local-test-fraction 0.5


def test_only_the_devices_are_reported_not_the_held_out_partitions():
    report = partition_report(dataset(IidPartitioner(num_partitions=5)), num_devices=3)

    assert [d.partition_id for d in report.devices] == [0, 1, 2]
    assert report.to_dict()["total_devices"] == 3


def test_the_report_shows_what_each_device_holds_without_a_modality_it_lacks():
    def held(arrays, device):  # device 1 lacks the first modality, as as_held would make it
        return arrays.without_modality(0) if device == 1 else arrays

    plain = partition_report(dataset(IidPartitioner(num_partitions=3)))
    report = partition_report(dataset(IidPartitioner(num_partitions=3)), held=held)

    assert report.devices[1].modalities_held[0] == 0 < plain.devices[1].modalities_held[0]
    assert report.devices[0] == plain.devices[0]
