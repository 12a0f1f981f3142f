r"""Data sensitivity per modality, and the entropy-weighted context term.

After ALPINE (arXiv:2510.17162, §4.1), whose risk model has a data-sensitivity and a context
dimension. The server knows only what a device declares: the names of the modalities
("fields") it holds. Nothing here touches a device's data.

**Sensitivity.** A :class:`SensitivityTable` maps modality names to :math:`s_j \in [0, 1]`
(:data:`DEFAULT_SENSITIVITY`: camera frames reveal faces and places, 0.9; audio reveals
voices and speech, 0.8; logs and token streams reveal behaviour, 0.6; motion sensors reveal
activity, 0.5). A name missing from the table falls back to the default of its
:class:`~fedmosaic.data.modality.ModalityKind` (:data:`KIND_SENSITIVITY`) when the kind is
known (from the task's :class:`~fedmosaic.data.modality.ModalitySpec` list), and to
``unknown`` (by default the highest kind default: unknown data is treated as the most
sensitive kind we know) otherwise. A device's sensitivity is the *maximum* over the modalities
it holds: its most revealing stream bounds what a leak can expose.
:func:`parse_sensitivities` reads overrides from a config string ``"image=0.9,audio=0.8"``.

**Context (entropy weight method).** Over the :math:`m` devices assessed together (one round's
cohort), let :math:`x_{ij} = 1` if device :math:`i` holds field :math:`j` (0 otherwise), for
the :math:`n` fields held by at least one of them. The entropy weight method (Shannon 1948;
as used for multi-criteria weighting, e.g. Zou, Yun & Sun 2006, J. Environ. Sci. 18(5)) takes
each field's *share across devices*

.. math::
    p_{ij} = \frac{x_{ij}}{\sum_i x_{ij}}, \qquad
    E_j = -\frac{1}{\ln m} \sum_i p_{ij} \ln p_{ij} \quad (0 \ln 0 = 0), \qquad
    w_j = \frac{1 - E_j}{\sum_k (1 - E_k)}.

With binary holdings, :math:`E_j = \ln c_j / \ln m` where :math:`c_j` devices hold field
:math:`j`: a field every device holds has :math:`E_j = 1` and weight 0 (it does not set any
device apart), a field few devices hold has low entropy and a large weight (holding it makes a
device stand out, a quasi-identifier). When no field discriminates (:math:`\sum_k (1 - E_k) =
0`, e.g. all devices hold the same fields, or :math:`m = 1`), the weights are equal,
:math:`w_j = 1/n`. Device :math:`i`'s context term is

.. math:: c_i = \sum_j w_j \, x_{ij} \, s_j \in [0, 1],

the sensitivity of what it holds, weighted by how much each field singles it out. Cost:
:math:`O(m \cdot n)` for one cohort; no state across rounds.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import TypeVar

from fedmosaic.data.modality import ModalityKind, ModalitySpec

K = TypeVar("K", bound=Hashable)

KIND_SENSITIVITY: Mapping[ModalityKind, float] = {
    ModalityKind.IMAGE: 0.9,
    ModalityKind.AUDIO: 0.8,
    ModalityKind.TOKENS: 0.6,
    ModalityKind.SENSOR: 0.5,
}
"""Fallback sensitivity of a modality by its kind."""

DEFAULT_SENSITIVITY: Mapping[str, float] = {
    "image": 0.9,
    "camera": 0.9,
    "video": 0.9,
    "audio": 0.8,
    "microphone": 0.8,
    "speech": 0.8,
    "logs": 0.6,
    "log": 0.6,
    "tokens": 0.6,
    "text": 0.6,
    "sensor": 0.5,
    "accelerometer": 0.5,
    "gyroscope": 0.5,
    "imu": 0.5,
}
"""Default sensitivity by modality name (names are matched case-insensitively)."""

_FORMAT = "'name=value[,name=value...]' with each value in [0, 1]"


def parse_sensitivities(text: str) -> dict[str, float]:
    """Parse ``"image=0.9,audio=0.8"`` into ``{"image": 0.9, "audio": 0.8}``.

    Whitespace around names and values is ignored and names are lower-cased; an empty or
    blank string gives ``{}``.

    Raises:
        ValueError: On an entry without ``=``, an empty name, a value that is not a number in
            ``[0, 1]``, or a repeated name; the message shows the expected format, the
            offending entry and the whole string.

    """
    result: dict[str, float] = {}
    if not text.strip():
        return result
    for entry in text.split(","):
        name, sep, raw = entry.partition("=")
        name = name.strip().lower()
        where = f"entry {entry.strip()!r} in {text!r}"
        if not sep or not name:
            raise ValueError(f"sensitivities must be {_FORMAT}, got {where}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"sensitivities must be {_FORMAT}, got a value that is not a number in {where}"
            ) from None
        if not 0.0 <= value <= 1.0:  # also rejects nan
            raise ValueError(f"sensitivities must be {_FORMAT}, got {value} in {where}")
        if name in result:
            raise ValueError(f"sensitivities name each modality once, got {name!r} twice in "
                             f"{text!r}")
        result[name] = value
    return result


class SensitivityTable:
    """Sensitivity :math:`s_j` of each modality name, with fallbacks by kind.

    Args:
        values: ``{name: sensitivity}``; overrides :data:`DEFAULT_SENSITIVITY` entry by entry
            (pass ``defaults=False`` to use only these).
        specs: The task's modality specs; a name missing from the table falls back to its
            spec's kind in :data:`KIND_SENSITIVITY`.
        unknown: Sensitivity of a name neither in the table nor in ``specs``.
        defaults: Whether to start from :data:`DEFAULT_SENSITIVITY`.

    Raises:
        ValueError: If a sensitivity lies outside ``[0, 1]``.

    """

    def __init__(
        self,
        values: Mapping[str, float] | None = None,
        *,
        specs: Sequence[ModalitySpec] = (),
        unknown: float = max(KIND_SENSITIVITY.values()),
        defaults: bool = True,
    ) -> None:
        table = dict(DEFAULT_SENSITIVITY) if defaults else {}
        table.update({_key(name): value for name, value in (values or {}).items()})
        for name, value in [*table.items(), ("unknown", unknown)]:
            _check_unit(f"sensitivity of {name!r}", value)
        self._values = table
        self._kinds = {_key(spec.name): ModalityKind(spec.kind) for spec in specs}
        self.unknown = float(unknown)

    def __getitem__(self, name: str) -> float:
        """Sensitivity of ``name``: the table, else its kind's default, else ``unknown``."""
        key = _key(name)
        if key in self._values:
            return self._values[key]
        if key in self._kinds:
            return KIND_SENSITIVITY[self._kinds[key]]
        return self.unknown

    def as_dict(self) -> dict[str, float]:
        """The explicit table (fallbacks not included)."""
        return dict(self._values)

    def device(self, modalities: Collection[str]) -> float:
        """A device's sensitivity: the maximum over the modalities it holds (0 if none)."""
        return max((self[name] for name in modalities), default=0.0)


def entropy_weights(holdings: Collection[Collection[str]]) -> dict[str, float]:
    r"""Entropy weight :math:`w_j` of each field held by at least one device (module docstring).

    Args:
        holdings: One collection of field names per device (duplicates within a device count
            once; names compared case-insensitively).

    Returns:
        ``{field: w_j}`` summing to 1 (``{}`` if no device holds anything).

    """
    m = len(holdings)
    counts: dict[str, int] = {}
    for fields in holdings:
        for name in {_key(f) for f in fields}:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return {}
    divergence = {
        name: (1.0 - math.log(c) / math.log(m)) if m > 1 else 0.0 for name, c in counts.items()
    }
    total = sum(divergence.values())
    if total <= 1e-12:
        return {name: 1.0 / len(counts) for name in counts}
    return {name: d / total for name, d in divergence.items()}


def context_scores(
    holdings: Mapping[K, Collection[str]], table: SensitivityTable
) -> dict[K, float]:
    r"""Context term :math:`c_i = \sum_j w_j x_{ij} s_j` of every device in one cohort."""
    weights = entropy_weights(list(holdings.values()))
    return {
        device: min(1.0, sum(weights[name] * table[name] for name in {_key(f) for f in fields}))
        for device, fields in holdings.items()
    }


def _key(name: str) -> str:
    return name.strip().lower()


def _check_unit(what: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
