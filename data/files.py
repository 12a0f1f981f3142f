"""Datasets from files, no Python needed: ``-c dataset=path/to/data.npz`` or ``data.csv``.

**NPZ** (``numpy.savez``): an array ``labels`` of shape ``(N,)`` (class ids ``0..C-1``), an
optional ``device`` of shape ``(N,)`` (a natural partition: one device per distinct value),
an optional boolean ``mask`` of shape ``(N, M)`` (which sample holds which modality; default
all), and one array per modality, in the file's order, its kind read from its shape and dtype:

=========================  ====================================================
array                      modality
=========================  ====================================================
float ``(N, C, T)``        sensor time series, ``C`` channels of ``T`` steps
float ``(N, C, H, W)``     image, ``C`` channels
float ``(N, F)``           ``F`` features, as a one-channel sensor series
integer ``(N, L)``         log tokens, ids ``0..V-1`` (0 is padding), ``V`` = max + 1
=========================  ====================================================

**CSV** (read with pandas): a ``label`` column, an optional ``device`` column, and one numeric
column per feature (one modality, ``features``).

A seeded :data:`CENTRAL_TEST_FRACTION` of the samples is the server's central test set. The
rest is split across ``num-clients`` devices: by ``device`` if the file has it (then
``num-clients`` must equal the number of devices), else by the run config's ``partitioner``
(``iid``, or ``dirichlet`` with ``dirichlet-alpha``), after a shuffle with the run's seed;
each device keeps ``local-test-fraction`` of its share for its own evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset, from_arrays, register_file_type
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays

CENTRAL_TEST_FRACTION = 0.2
"""Share of a file's samples held out as the server's central test set."""
LABELS, DEVICE, MASK = "labels", "device", "mask"
"""Reserved NPZ array names."""
CSV_LABEL, CSV_DEVICE = "label", "device"
"""Reserved CSV column names."""


@register_file_type(".npz")
@register_file_type(".csv")
def file_dataset(config: RunConfig) -> FederatedDataset:
    """The federated dataset in the file ``config.dataset`` (module docstring).

    Raises:
        ValueError: naming the file, what was expected and what was found.
    """
    path = Path(config.dataset).expanduser()
    if not path.is_file():
        raise ValueError(f"dataset {config.dataset!r}: no such file")
    if path.suffix.lower() == ".npz":
        arrays, specs, devices = read_npz(path)
    else:
        arrays, specs, devices = read_csv(path)
    num_classes = int(arrays.labels.max()) + 1 if len(arrays) else 0
    rng = np.random.default_rng([config.seed, 0xF11E])
    order = rng.permutation(len(arrays))
    num_test = int(round(CENTRAL_TEST_FRACTION * len(arrays)))
    pool_rows, test_rows = order[num_test:], order[:num_test]
    columns = {}
    if devices is not None:
        found = len(np.unique(devices[pool_rows]))
        if found != config.num_partitions:
            raise ValueError(f"dataset {path}: its '{DEVICE}' column names {found} devices, "
                             f"so num-clients + unseen-devices + public-devices must be "
                             f"{found}, got {config.num_clients} + {config.unseen_devices} + "
                             f"{config.public_devices}")
        partitioner = NaturalIdPartitioner(partition_by=DEVICE)
        columns[DEVICE] = devices[pool_rows]
    elif config.partitioner == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions=config.num_partitions,
                                           partition_by="label", alpha=config.dirichlet_alpha,
                                           min_partition_size=1, seed=config.seed)
    else:
        partitioner = IidPartitioner(num_partitions=config.num_partitions)
    return from_arrays(arrays.subset(pool_rows), arrays.subset(test_rows), specs, num_classes,
                       partitioner, columns=columns)


def read_npz(path: Path) -> tuple[MultimodalArrays, tuple[ModalitySpec, ...], np.ndarray | None]:
    """Samples, modalities and optional devices of an NPZ file (module docstring).

    Raises:
        ValueError: If ``labels`` is missing or malformed, an array does not have ``N`` rows,
            or a modality's shape or dtype fits no kind.
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if LABELS not in arrays:
        raise ValueError(f"dataset {path}: expected an array '{LABELS}' of shape (N,) with each "
                         f"sample's class, found arrays {sorted(arrays)}")
    labels = _labels(path, arrays.pop(LABELS), f"array '{LABELS}'")
    devices = arrays.pop(DEVICE, None)
    mask = arrays.pop(MASK, None)
    if not arrays:
        raise ValueError(f"dataset {path}: expected at least one modality array besides "
                         f"{[LABELS, DEVICE, MASK]}, found none")
    for name, array in [*arrays.items(), (DEVICE, devices), (MASK, mask)]:
        if array is not None and array.shape[:1] != labels.shape:
            raise ValueError(f"dataset {path}: array {name!r} must have {len(labels)} rows "
                             f"(one per label), got shape {array.shape}")
    specs = tuple(_spec(path, name, array) for name, array in arrays.items())
    if mask is None:
        mask = np.ones((len(labels), len(specs)), dtype=bool)
    elif mask.dtype != np.bool_ or mask.shape != (len(labels), len(specs)):
        raise ValueError(f"dataset {path}: array '{MASK}' must be bool of shape "
                         f"({len(labels)}, {len(specs)}), got {mask.dtype} {mask.shape}")
    inputs = {spec.name: _as_modality(arrays[spec.name], spec) for spec in specs}
    for spec in specs:
        _check_padding(path, spec, inputs[spec.name])
    samples = MultimodalArrays(inputs=inputs, mask=mask, labels=labels)
    samples.validate(specs, int(labels.max()) + 1 if len(labels) else 0)
    return samples, specs, devices


def read_csv(path: Path) -> tuple[MultimodalArrays, tuple[ModalitySpec, ...], np.ndarray | None]:
    """Samples of a CSV file: its numeric columns as one ``features`` modality.

    Raises:
        ValueError: If the ``label`` column is missing or malformed, or a feature column is
            not numeric.
    """
    table = pd.read_csv(path)
    if CSV_LABEL not in table.columns:
        raise ValueError(f"dataset {path}: expected a column '{CSV_LABEL}' with each sample's "
                         f"class, found columns {list(table.columns)}")
    labels = _labels(path, table.pop(CSV_LABEL).to_numpy(), f"column '{CSV_LABEL}'")
    devices = table.pop(CSV_DEVICE).to_numpy() if CSV_DEVICE in table.columns else None
    if not len(table.columns):
        raise ValueError(f"dataset {path}: expected feature columns besides '{CSV_LABEL}' and "
                         f"'{CSV_DEVICE}', found none")
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if text:
        raise ValueError(f"dataset {path}: feature columns must be numeric, got non-numeric "
                         f"columns {text}")
    if table.isna().to_numpy().any():
        raise ValueError(f"dataset {path}: feature columns have empty cells in columns "
                         f"{[c for c in table.columns if table[c].isna().any()]}")
    features = table.to_numpy(dtype=np.float32)[:, None, :]
    spec = ModalitySpec("features", ModalityKind.SENSOR, features.shape[1:])
    samples = MultimodalArrays(inputs={spec.name: features},
                               mask=np.ones((len(labels), 1), dtype=bool), labels=labels)
    return samples, (spec,), devices


def _labels(path: Path, values: np.ndarray, what: str) -> np.ndarray:
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer) or (
            len(values) and values.min() < 0):
        raise ValueError(f"dataset {path}: {what} must hold integer class ids >= 0, one per "
                         f"sample, got {values.dtype} of shape {values.shape}")
    return values.astype(np.int64)


def _spec(path: Path, name: str, array: np.ndarray) -> ModalitySpec:
    """The modality an NPZ array is (module docstring's table)."""
    rank = array.ndim - 1
    if np.issubdtype(array.dtype, np.integer) and rank == 1:
        if len(array) and array.min() < 0:
            raise ValueError(f"dataset {path}: token array {name!r} must hold ids >= 0, got "
                             f"a minimum of {array.min()}")
        return ModalitySpec(name, ModalityKind.TOKENS, array.shape[1:],
                            vocab_size=max(2, int(array.max()) + 1 if len(array) else 2))
    if np.issubdtype(array.dtype, np.floating) and rank in (1, 2, 3):
        kind = ModalityKind.IMAGE if rank == 3 else ModalityKind.SENSOR
        return ModalitySpec(name, kind, (1, *array.shape[1:]) if rank == 1 else array.shape[1:])
    raise ValueError(f"dataset {path}: array {name!r} of {array.dtype} with shape "
                     f"{array.shape} fits no modality; expected float (N, C, T), "
                     "(N, C, H, W) or (N, F), or integer tokens (N, L)")


def _check_padding(path: Path, spec: ModalitySpec, values: np.ndarray) -> None:
    """NaN is allowed only as the padding of ragged sensor series: trailing, in every channel.

    Raises:
        ValueError: naming the modality and the first offending sample.
    """
    if spec.kind == ModalityKind.TOKENS or not np.isnan(values).any():
        return
    if spec.kind != ModalityKind.SENSOR:
        raise ValueError(f"dataset {path}: modality {spec.name!r} holds NaN; only sensor "
                         "series may, as the padding of shorter series")
    padding = np.isnan(values)  # (N, C, T)
    whole_steps = padding.any(axis=1) == padding.all(axis=1)
    trailing = np.all(np.diff(padding.any(axis=1).astype(np.int8), axis=1) >= 0, axis=1)
    bad = np.flatnonzero(~whole_steps.all(axis=1) | ~trailing | padding[:, :, 0].any(axis=1))
    if bad.size:
        raise ValueError(f"dataset {path}: sensor series {spec.name!r} of sample {bad[0]} has "
                         "NaN that is not padding: padding fills every channel from some step "
                         "to the end, after at least one valid step")


def _as_modality(array: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    """``array`` in the shape and dtype ``spec`` stores."""
    return np.ascontiguousarray(array.reshape(len(array), *spec.shape), dtype=spec.dtype)
