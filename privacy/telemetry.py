r"""Local-DP telemetry: per-field ε budgets, sequential composition, and a ledger of spending.

A device publishes summary telemetry of its sensor readings (per channel mean and standard
deviation) to the edge. Each value of field :math:`j` is clipped to its domain
:math:`[l_j, u_j]` and released with the bounded Laplace mechanism
(:class:`~fedmosaic.privacy.laplace.BoundedLaplace`, sensitivity :math:`u_j - l_j`: any two
readings are neighbours, i.e. local DP) at :math:`\varepsilon_j` per release.

Sequential composition (Dwork & Roth 2014, "The Algorithmic Foundations of Differential
Privacy", Theorem 3.16): :math:`T` releases of field :math:`j` cost
:math:`\sum_t \varepsilon_{j,t}`, and releasing all fields of one device costs
:math:`\varepsilon_{\mathrm{total}} = \sum_j \sum_t \varepsilon_{j,t}`. The
:class:`TelemetryLedger` records what each field has spent; a release that would take a field
past its budget :math:`B_j` is withheld and nothing is spent on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.privacy.exceptions import BudgetExhausted
from fedmosaic.privacy.laplace import BoundedLaplace

BUDGET_SLACK = 1e-9
"""Relative float tolerance when comparing a sum of ε to a budget."""


@dataclass(frozen=True)
class TelemetryField:
    r"""One released quantity with its domain and budget.

    Attributes:
        name: The field's name (unique within a release).
        lower: Domain lower bound :math:`l`; readings below are clipped to it.
        upper: Domain upper bound :math:`u > l`; readings above are clipped to it.
        epsilon: :math:`\varepsilon` of one release, ``> 0``.
        budget: Total :math:`B \ge \varepsilon` this field may spend over all releases.

    Raises:
        ValueError: If a parameter is out of range.

    """

    name: str
    lower: float
    upper: float
    epsilon: float
    budget: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TelemetryField.name must be non-empty, got ''")
        mechanism = self.mechanism()  # validates epsilon and the domain
        if not (math.isfinite(self.budget) and self.budget >= mechanism.epsilon):
            raise ValueError(
                f"TelemetryField {self.name!r}: budget must be finite and >= epsilon "
                f"{self.epsilon}, got {self.budget}"
            )

    def mechanism(self) -> BoundedLaplace:
        """The bounded Laplace mechanism of one release of this field."""
        return BoundedLaplace(epsilon=self.epsilon, lower=self.lower, upper=self.upper)


class TelemetryLedger:
    """ε spent per field under sequential composition; persists as a flat ``{field: ε}``.

    Args:
        spent: Previously saved :meth:`state_dict` (``{field: ε spent}``), or ``None``.

    Raises:
        ValueError: If a saved amount is negative or not finite.

    """

    def __init__(self, spent: Mapping[str, float] | None = None) -> None:
        self._spent: dict[str, float] = {}
        for name, value in (spent or {}).items():
            if not (math.isfinite(float(value)) and float(value) >= 0.0):
                raise ValueError(f"ledger entry {name!r} must be a finite ε >= 0, got {value}")
            self._spent[str(name)] = float(value)

    def spent(self, name: str) -> float:
        """ε field ``name`` has spent so far (0 if never released)."""
        return self._spent.get(name, 0.0)

    @property
    def total(self) -> float:
        """ε spent over all fields (sequential composition)."""
        return sum(self._spent.values())

    def can_spend(self, field: TelemetryField) -> bool:
        """Whether one more release of ``field`` stays within its budget."""
        return self.spent(field.name) + field.epsilon <= field.budget * (1.0 + BUDGET_SLACK)

    def spend(self, field: TelemetryField) -> None:
        """Record one release of ``field``.

        Raises:
            BudgetExhausted: If the release would exceed the field's budget (nothing spent).

        """
        if not self.can_spend(field):
            raise BudgetExhausted(
                f"telemetry field {field.name!r} has spent {self.spent(field.name):.6g} of its "
                f"budget {field.budget:.6g}; another release costs {field.epsilon:.6g}, so it "
                "is withheld"
            )
        self._spent[field.name] = self.spent(field.name) + field.epsilon

    def state_dict(self) -> dict[str, float]:
        """``{field: ε spent}``, to save and pass back to the constructor."""
        return dict(self._spent)


@dataclass(frozen=True)
class TelemetryRelease:
    """What one call to :func:`release_telemetry` published.

    Attributes:
        values: ``{field: noisy value}`` of the released fields.
        withheld: Fields not released because their budget is spent.
        epsilon_spent: ε this release cost (sum over released fields).

    """

    values: dict[str, float]
    withheld: tuple[str, ...]
    epsilon_spent: float


def release_telemetry(
    readings: Mapping[str, float],
    fields: Sequence[TelemetryField],
    ledger: TelemetryLedger,
    rng: np.random.Generator,
) -> TelemetryRelease:
    """Release every field of ``readings`` that still has budget; spend it in ``ledger``.

    Args:
        readings: True values, one per field name (clipped to the field's domain).
        fields: The fields to release (unique names, all present in ``readings``).
        ledger: The device's ledger; updated in place.
        rng: Randomness of the noise. Must not be predictable by the recipient (seeding it
            from a value the server knows would let the server subtract the noise).

    Returns:
        The :class:`TelemetryRelease`.

    Raises:
        ValueError: If names repeat, a field has no reading, or a reading is not finite.

    """
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"telemetry fields must have unique names, got {names}")
    missing = [n for n in names if n not in readings]
    if missing:
        raise ValueError(f"readings lack telemetry field(s) {missing}; got {sorted(readings)}")
    values: dict[str, float] = {}
    withheld: list[str] = []
    spent = 0.0
    for field in fields:
        reading = float(readings[field.name])
        if not math.isfinite(reading):
            raise ValueError(f"reading of telemetry field {field.name!r} must be finite, "
                             f"got {reading}")
        if not ledger.can_spend(field):
            withheld.append(field.name)
            continue
        clipped = min(max(reading, field.lower), field.upper)
        values[field.name] = float(field.mechanism().release(clipped, rng))
        ledger.spend(field)
        spent += field.epsilon
    return TelemetryRelease(values=values, withheld=tuple(withheld), epsilon_spent=spent)


def sensor_fields(
    specs: Sequence[ModalitySpec], bound: float, epsilon: float, budget: float
) -> tuple[TelemetryField, ...]:
    """Fields ``<modality>.ch<c>.mean`` in ``[-bound, bound]`` and ``.std`` in ``[0, bound]``.

    One pair per channel of every sensor and audio modality (standardised data: ``bound``
    of a few standard deviations).

    Raises:
        ValueError: If ``bound <= 0`` or ``epsilon``/``budget`` is out of range.

    """
    if not (math.isfinite(bound) and bound > 0.0):
        raise ValueError(f"telemetry bound must be a finite number > 0, got {bound}")
    fields = []
    for spec in specs:
        if spec.kind not in (ModalityKind.SENSOR, ModalityKind.AUDIO):
            continue
        for channel in range(spec.shape[0]):
            prefix = f"{spec.name}.ch{channel}"
            fields.append(TelemetryField(f"{prefix}.mean", -bound, bound, epsilon, budget))
            fields.append(TelemetryField(f"{prefix}.std", 0.0, bound, epsilon, budget))
    return tuple(fields)


def sensor_readings(arrays: MultimodalArrays, specs: Sequence[ModalitySpec]) -> dict[str, float]:
    """Per channel mean and standard deviation over a device's present samples and time.

    Keys match :func:`sensor_fields`. A modality absent from every sample reads 0.
    """
    readings: dict[str, float] = {}
    for index, spec in enumerate(specs):
        if spec.kind not in (ModalityKind.SENSOR, ModalityKind.AUDIO):
            continue
        present = arrays.inputs[spec.name][arrays.mask[:, index]]
        for channel in range(spec.shape[0]):
            series = present[:, channel] if len(present) else np.zeros(1)
            valid = series[~np.isnan(series)] if np.isnan(series).any() else series
            valid = valid if valid.size else np.zeros(1)  # NaN: padding of ragged series
            readings[f"{spec.name}.ch{channel}.mean"] = float(np.mean(valid))
            readings[f"{spec.name}.ch{channel}.std"] = float(np.std(valid))
    return readings
