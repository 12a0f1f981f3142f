"""The ClientApp's telemetry path: local-DP sensor summaries published to the edge.

Each training reply carries a ``telemetry`` ConfigRecord with the device's noisy per-channel
sensor summaries (:mod:`fedmosaic.privacy.telemetry`), ``epsilon-spent`` (this release) and
``epsilon-total`` (all releases so far), and the names of ``withheld`` fields whose budget is
spent. The device's ledger lives in ``context.state`` so it carries across rounds.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.data.modality import ModalitySpec, MultimodalArrays
from fedmosaic.privacy.telemetry import (
    TelemetryLedger,
    release_telemetry,
    sensor_fields,
    sensor_readings,
)


def publish_telemetry(
    arrays: MultimodalArrays,
    specs: tuple[ModalitySpec, ...],
    config: RunConfig,
    context: Context,
    rng: np.random.Generator | None = None,
) -> ConfigRecord:
    """Release this round's telemetry and spend it from the device's ledger in ``context.state``.

    Args:
        arrays: The device's local samples the summaries describe.
        specs: The dataset's modalities.
        config: The run config (``telemetry-epsilon``, ``telemetry-budget``,
            ``telemetry-bound``).
        context: The ClientApp's context; its state keeps the ledger.
        rng: Noise source; by default seeded from the operating system's entropy, so the
            server cannot predict (and subtract) the noise.

    Returns:
        The ConfigRecord to add to the reply under :data:`fedmosaic.records.TELEMETRY`.

    """
    saved = context.state.config_records.get(records.TELEMETRY_LEDGER)
    ledger = TelemetryLedger(dict(saved) if saved is not None else None)
    fields = sensor_fields(specs, config.telemetry_bound, config.telemetry_epsilon,
                           config.telemetry_budget)
    release = release_telemetry(sensor_readings(arrays, specs), fields, ledger,
                                rng if rng is not None else np.random.default_rng())
    context.state[records.TELEMETRY_LEDGER] = ConfigRecord(ledger.state_dict())
    return ConfigRecord({
        **release.values,
        records.TELEMETRY_EPSILON_SPENT: release.epsilon_spent,
        records.TELEMETRY_EPSILON_TOTAL: ledger.total,
        records.TELEMETRY_WITHHELD: list(release.withheld),
    })
