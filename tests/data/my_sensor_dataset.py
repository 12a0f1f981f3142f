"""The README's "Adding a dataset" example, kept here so a test runs it verbatim."""

import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner

from fedmosaic.data.datasets import from_arrays
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays

SPECS = (ModalitySpec("thermal", ModalityKind.SENSOR, (2, 32)),
         ModalitySpec("door-log", ModalityKind.TOKENS, (8,), vocab_size=20))


def make_arrays(n: int, rng: np.random.Generator) -> MultimodalArrays:
    labels = rng.integers(0, 3, n)
    thermal = rng.normal(labels[:, None, None], 1.0, (n, 2, 32)).astype(np.float32)
    tokens = rng.integers(1, 20, (n, 8))
    return MultimodalArrays(inputs={"thermal": thermal, "door-log": tokens},
                            mask=np.ones((n, 2), dtype=bool), labels=labels)


def load(config):
    """Factory for ``-c dataset=my_sensor_dataset:load``."""
    rng = np.random.default_rng(config.seed)
    partitioner = DirichletPartitioner(num_partitions=config.num_clients,
                                       partition_by="label", alpha=config.dirichlet_alpha,
                                       min_partition_size=5, seed=config.seed)
    return from_arrays(pool=make_arrays(600, rng), test=make_arrays(200, rng), specs=SPECS,
                       num_classes=3, partitioner=partitioner)
