import numpy as np
import pytest
from flwr_datasets.partitioner import IidPartitioner

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import (
    FederatedDataset,
    available_datasets,
    from_arrays,
    load_dataset,
    register_dataset,
)
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays

SPECS = (ModalitySpec("temp", ModalityKind.SENSOR, (1, 4)),)


def arrays(n, offset=0):
    return MultimodalArrays(
        inputs={"temp": np.arange(offset, offset + 4 * n, dtype=np.float32).reshape(n, 1, 4)},
        mask=np.ones((n, 1), dtype=bool),
        labels=np.arange(n) % 2,
    )


def test_from_arrays_splits_every_sample_into_exactly_one_partition():
    pool = arrays(40)
    dataset = from_arrays(pool, arrays(6), SPECS, 2, IidPartitioner(num_partitions=4),
                          test_fraction=0.25)

    parts = [dataset.partition(p) for p in range(dataset.num_partitions)]

    seen = np.concatenate([np.concatenate([tr.inputs["temp"][:, 0, 0], te.inputs["temp"][:, 0, 0]])
                           for tr, te in parts])
    assert sorted(seen) == sorted(pool.inputs["temp"][:, 0, 0])
    assert [(len(tr), len(te)) for tr, te in parts] == [(8, 2)] * 4
    assert len(dataset.central_test()) == 6


def test_partition_id_out_of_range_is_rejected():
    dataset = from_arrays(arrays(8), arrays(2), SPECS, 2, IidPartitioner(num_partitions=2))

    with pytest.raises(ValueError, match=r"partition-id must lie in \[0, 2\), got 2"):
        dataset.partition(2)


def test_from_arrays_validates_shapes():
    bad = arrays(8)
    bad.inputs["temp"] = bad.inputs["temp"][:, :, :3]

    with pytest.raises(ValueError, match="modality 'temp' must have shape"):
        from_arrays(bad, arrays(2), SPECS, 2, IidPartitioner(num_partitions=2))


def test_builtin_datasets_are_registered():
    assert {"smartwatch", "synthetic"} <= set(available_datasets())


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'nope'; expected one of"):
        load_dataset(RunConfig.from_mapping({"dataset": "nope"}))


def test_registered_factory_is_selectable_by_name():
    @register_dataset("tiny-test")
    def tiny(config):
        return from_arrays(arrays(8), arrays(2), SPECS, 2,
                           IidPartitioner(num_partitions=config.num_clients))

    dataset = load_dataset(RunConfig.from_mapping({"dataset": "tiny-test", "num-clients": 2}))

    assert dataset.num_partitions == 2


def test_readme_example_loads_by_module_path():
    config = RunConfig.from_mapping({"dataset": "my_sensor_dataset:load", "num-clients": 3})

    dataset = load_dataset(config)
    train, test = dataset.partition(1)

    assert isinstance(dataset, FederatedDataset)
    assert dataset.num_partitions == 3
    train.validate(dataset.specs, dataset.num_classes)
    assert len(train) > 0 and len(test) > 0


def test_module_path_that_does_not_import_is_a_clear_error():
    with pytest.raises(ValueError, match="could not import factory 'load' from 'no_such_mod'"):
        load_dataset(RunConfig.from_mapping({"dataset": "no_such_mod:load"}))


def test_factory_must_return_a_federated_dataset():
    @register_dataset("not-a-dataset")
    def wrong(config):
        return [1, 2, 3]

    with pytest.raises(TypeError, match="must return a FederatedDataset, got list"):
        load_dataset(RunConfig.from_mapping({"dataset": "not-a-dataset"}))
