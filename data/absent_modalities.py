"""Simulation: devices that lack a modality altogether (a watch without a gyroscope).

With ``missing-modality-devices`` = f, ``round(f · num-clients)`` devices, drawn from the run's
seed, each lack one modality, also drawn from the seed: it is absent from every sample they
hold, for training and for their own evaluation (samples left with no modality are dropped).
It turns any dataset into one where part of the federation trains without a modality, which
the missing-modality evaluation (``models/missing_modality.py``) then probes.
"""

from __future__ import annotations

import numpy as np

from fedmosaic.config import RunConfig
from fedmosaic.data.modality import MultimodalArrays

_STREAM = 0x4D15


def absent_modality(config: RunConfig, num_modalities: int, partition_id: int) -> int | None:
    """The mask column device ``partition_id`` lacks, or ``None`` if it has them all."""
    count = int(round(config.missing_modality_devices * config.num_clients))
    if not count or num_modalities < 2:
        return None
    rng = np.random.default_rng([config.seed, _STREAM])
    lacking = rng.permutation(config.num_clients)[:count]
    columns = rng.integers(num_modalities, size=count)
    found = np.flatnonzero(lacking == partition_id)
    return int(columns[found[0]]) if found.size else None


def as_held(config: RunConfig, arrays: MultimodalArrays, partition_id: int) -> MultimodalArrays:
    """``arrays`` as device ``partition_id`` holds them: without the modality it lacks."""
    column = absent_modality(config, arrays.mask.shape[1], partition_id)
    return arrays if column is None else arrays.without_modality(column)
