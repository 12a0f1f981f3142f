"""Simulation: devices that lack a modality altogether (a watch without a gyroscope).

With ``missing-modality-devices`` = f, ``round(f · num-clients)`` devices, drawn from the run's
seed, each lack one modality, also drawn from the seed unless ``missing-modality-name`` names
it: it is absent from every sample they hold, for training and for their own evaluation
(samples left with no modality are dropped). It turns any dataset into one where part of the
federation trains without a modality, which the missing-modality evaluation
(``models/missing_modality.py``) then probes; with f = 1 and a name, the whole federation
trains without that modality, and the central evaluation's accuracy without it is what the
other modalities alone reach under federated training.
"""

from __future__ import annotations

import numpy as np

from fedmosaic.config import RunConfig
from fedmosaic.data.modality import ModalitySpec, MultimodalArrays

_STREAM = 0x4D15


def named_column(config: RunConfig, specs: tuple[ModalitySpec, ...]) -> int | None:
    """The mask column of ``missing-modality-name`` (``None`` when empty: drawn per device).

    Raises:
        ValueError: If the name is not one of the dataset's modalities.
    """
    if not config.missing_modality_name:
        return None
    names = [spec.name for spec in specs]
    if config.missing_modality_name not in names:
        raise ValueError(f"missing-modality-name must be one of the dataset's modalities "
                         f"{names}, got {config.missing_modality_name!r}")
    return names.index(config.missing_modality_name)


def absent_modality(config: RunConfig, specs: tuple[ModalitySpec, ...],
                    partition_id: int) -> int | None:
    """The mask column device ``partition_id`` lacks, or ``None`` if it has them all."""
    count = int(round(config.missing_modality_devices * config.num_clients))
    named = named_column(config, specs)
    if not count or len(specs) < 2:
        return None
    rng = np.random.default_rng([config.seed, _STREAM])
    lacking = rng.permutation(config.num_clients)[:count]
    columns = rng.integers(len(specs), size=count)
    found = np.flatnonzero(lacking == partition_id)
    if not found.size:
        return None
    return named if named is not None else int(columns[found[0]])


def as_held(config: RunConfig, arrays: MultimodalArrays, partition_id: int,
            specs: tuple[ModalitySpec, ...]) -> MultimodalArrays:
    """``arrays`` as device ``partition_id`` holds them: without the modality it lacks.

    ``arrays``' mask columns are in ``specs`` order.
    """
    column = absent_modality(config, specs, partition_id)
    return arrays if column is None else arrays.without_modality(column)
