"""The federated dataset interface, the registry of built-in datasets, and ``from_arrays``.

A dataset is anything that implements :class:`FederatedDataset`: its modalities, its number
of classes and partitions, one ``(train, test)`` pair per partition (a device's local data)
and a central held-out test set the server evaluates on.

Plugging in your own data takes one of two routes (README, "Adding a dataset"):

1. pool your arrays into a :class:`MultimodalArrays` and call :func:`from_arrays` with any
   ``flwr_datasets`` partitioner (IID, Dirichlet, natural id, ...);
2. or register a factory, ``@register_dataset("name")``, or point the run config at
   ``dataset = "package.module:factory"``. A factory takes the :class:`RunConfig` and returns
   a :class:`FederatedDataset`;
3. or name a data file, ``dataset = "path/to/data.npz"`` (or ``.csv``), no Python needed
   (``data/files.py``).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner

from fedmosaic.config import RunConfig
from fedmosaic.data.modality import ModalitySpec, MultimodalArrays


class FederatedDataset(abc.ABC):
    """Local data for each of ``num_partitions`` devices plus a central test set."""

    specs: tuple[ModalitySpec, ...]
    num_classes: int

    @property
    @abc.abstractmethod
    def num_partitions(self) -> int:
        """How many devices (partitions) the data is split into."""

    @abc.abstractmethod
    def partition(self, partition_id: int) -> tuple[MultimodalArrays, MultimodalArrays]:
        """The ``(train, test)`` samples of device ``partition_id``."""

    @abc.abstractmethod
    def central_test(self) -> MultimodalArrays:
        """Held-out samples the server evaluates the global model on."""

    def central_test_without(self, partitions: Collection[int]) -> MultimodalArrays:
        """The central test set without any sample of ``partitions`` (public donors).

        Raises:
            ValueError: If the dataset cannot tell which central test samples come from
                which partition (override this where it can).
        """
        if not partitions:
            return self.central_test()
        raise ValueError(f"dataset {type(self).__name__} cannot leave partitions "
                         f"{sorted(partitions)} out of its central test set; public-devices "
                         f"needs smartwatch, synthetic or a dataset that overrides "
                         f"central_test_without")

    sensitive_attribute: str | None = None
    """The protected attribute of a device's data (``subject``, ``site``), if the data has one:
    what the anonymizer hides and the re-identification attacks try to recover."""
    num_sensitive_values: int = 0
    """How many values :attr:`sensitive_attribute` takes (ids ``0 .. n - 1``)."""

    def sensitive_value(self, partition_id: int) -> int:
        """The value of :attr:`sensitive_attribute` on device ``partition_id``'s samples.

        A device knows it about its own data (a subject knows who wears the watch).

        Raises:
            ValueError: If the dataset declares no sensitive attribute.
        """
        raise ValueError(f"dataset {type(self).__name__} declares no sensitive attribute; the "
                         "anonymizer and the re-identification attacks need one (set "
                         "`sensitive_attribute`, `num_sensitive_values` and override "
                         "`sensitive_value`)")

    def check_partition_id(self, partition_id: int) -> None:
        """Raise ``ValueError`` unless ``0 <= partition_id < num_partitions``."""
        if not 0 <= partition_id < self.num_partitions:
            raise ValueError(
                f"partition-id must lie in [0, {self.num_partitions}), got {partition_id}"
            )


@dataclass
class PartitionedArrays(FederatedDataset):
    """A pooled sample set split into devices by a ``flwr_datasets`` partitioner.

    The partitioner sees a ``datasets.Dataset`` with one row per sample and the columns
    ``index`` (row in ``pool``), ``label`` and every entry of ``columns`` (for example a
    ``subject`` column for ``NaturalIdPartitioner(partition_by="subject")``). With ``shuffle``
    (the default) the rows are in an order drawn from ``seed``, so a partitioner that cuts
    contiguous chunks (flwr-datasets' ``IidPartitioner`` does not shuffle) is IID even when
    the pool is stored sorted by label. Each partition is then split into local train and
    test parts, ``test_fraction`` of it held out for the device's own evaluation.

    ``seed`` and ``test_fraction`` left at ``None`` are taken from the run config when the
    run loads the dataset (``seed``, ``local-test-fraction``; :meth:`bind`), or 0 and 0.2
    outside a run.
    """

    pool: MultimodalArrays
    test: MultimodalArrays
    specs: tuple[ModalitySpec, ...]
    num_classes: int
    partitioner: Partitioner
    columns: dict[str, np.ndarray]
    test_fraction: float | None = None
    seed: int | None = None
    shuffle: bool = True

    def __post_init__(self) -> None:
        self.pool.validate(self.specs, self.num_classes)
        self.test.validate(self.specs, self.num_classes)
        if self.test_fraction is not None and not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in [0, 1), got {self.test_fraction}")
        for name, column in self.columns.items():
            if len(column) != len(self.pool):
                raise ValueError(
                    f"column {name!r} needs {len(self.pool)} entries, got {len(column)}"
                )
        self._bound = False

    def bind(self, seed: int, test_fraction: float) -> None:
        """Fill ``seed`` and ``test_fraction`` where left ``None``; hand the rows over.

        The partitioner gets the pool's rows in the order drawn from ``seed`` (``shuffle``).
        """
        if self._bound:  # a dataset reused by a factory keeps the rows it was given
            return
        self.seed = seed if self.seed is None else self.seed
        self.test_fraction = test_fraction if self.test_fraction is None else self.test_fraction
        order = (np.random.default_rng([self.seed, 0x5EED]).permutation(len(self.pool))
                 if self.shuffle else np.arange(len(self.pool)))
        table = {"index": order, "label": self.pool.labels[order]}
        table |= {name: np.asarray(column)[order] for name, column in self.columns.items()}
        self.partitioner.dataset = Dataset.from_dict(table)
        self._bound = True

    @property
    def num_partitions(self) -> int:
        """Number of partitions the partitioner produces."""
        self.bind(0, DEFAULT_TEST_FRACTION)  # a no-op once bound
        return int(self.partitioner.num_partitions)

    def partition(self, partition_id: int) -> tuple[MultimodalArrays, MultimodalArrays]:
        """Local ``(train, test)`` of one partition, split at random by ``test_fraction``."""
        self.bind(0, DEFAULT_TEST_FRACTION)  # a no-op once bound
        self.check_partition_id(partition_id)
        index = np.asarray(self.partitioner.load_partition(partition_id)["index"])
        rng = np.random.default_rng([self.seed, partition_id])
        index = rng.permutation(index)
        num_test = int(round(self.test_fraction * len(index)))
        return self.pool.subset(index[num_test:]), self.pool.subset(index[:num_test])

    def central_test(self) -> MultimodalArrays:
        """The held-out set given at construction."""
        return self.test


DEFAULT_TEST_FRACTION = 0.2
"""Local test share of a partition outside a run (a run uses ``local-test-fraction``)."""


def from_arrays(
    pool: MultimodalArrays,
    test: MultimodalArrays,
    specs: tuple[ModalitySpec, ...],
    num_classes: int,
    partitioner: Partitioner,
    columns: dict[str, np.ndarray] | None = None,
    test_fraction: float | None = None,
    seed: int | None = None,
    shuffle: bool = True,
) -> FederatedDataset:
    """Wrap pooled arrays and a ``flwr_datasets`` partitioner as a :class:`FederatedDataset`.

    The pool is shuffled with the run's ``seed`` before the partitioner sees it (``shuffle``);
    each device keeps ``local-test-fraction`` of its partition for local evaluation. Both
    come from the run config unless given here (:class:`PartitionedArrays`).
    """
    return PartitionedArrays(
        pool=pool,
        test=test,
        specs=specs,
        num_classes=num_classes,
        partitioner=partitioner,
        columns=dict(columns or {}),
        test_fraction=test_fraction,
        seed=seed,
        shuffle=shuffle,
    )


DatasetFactory = Callable[[RunConfig], FederatedDataset]
_REGISTRY: dict[str, DatasetFactory] = {}
_FILE_TYPES: dict[str, DatasetFactory] = {}


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator: make ``factory`` selectable as ``dataset = "<name>"``."""

    def decorate(factory: DatasetFactory) -> DatasetFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def register_file_type(suffix: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator: make ``dataset = "path/to/file<suffix>"`` load with ``factory``."""

    def decorate(factory: DatasetFactory) -> DatasetFactory:
        _FILE_TYPES[suffix.lower()] = factory
        return factory

    return decorate


def is_file_dataset(name: str) -> bool:
    """Whether ``dataset = name`` names a data file of a registered type."""
    _import_builtins()
    return Path(name).suffix.lower() in _FILE_TYPES


def available_datasets() -> list[str]:
    """Names of the registered datasets."""
    _import_builtins()
    return sorted(_REGISTRY)


def load_dataset(config: RunConfig) -> FederatedDataset:
    """The dataset named by ``config.dataset``: a registered name or ``module:factory``."""
    name = config.dataset
    if is_file_dataset(name):
        factory = _FILE_TYPES[Path(name).suffix.lower()]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"dataset {name!r}: could not import factory {attr!r} from {module_name!r} "
                f"({err})"
            ) from err
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {sorted(_REGISTRY)}, a data file "
            f"({', '.join(sorted(_FILE_TYPES))}) or a 'package.module:factory' path"
        )
    dataset = factory(config)
    if not isinstance(dataset, FederatedDataset):
        raise TypeError(
            f"dataset factory {name!r} must return a FederatedDataset, got "
            f"{type(dataset).__name__}"
        )
    if isinstance(dataset, PartitionedArrays):
        dataset.bind(config.seed, config.local_test_fraction)
    return dataset


def _import_builtins() -> None:
    """Import the modules whose ``@register_dataset`` calls fill the registry."""
    importlib.import_module("fedmosaic.data.smartwatch")
    importlib.import_module("fedmosaic.data.synthetic")
    importlib.import_module("fedmosaic.data.files")
