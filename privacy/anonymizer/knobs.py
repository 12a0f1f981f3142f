"""The anonymizer's knobs: what is set per device between rounds, no retraining.

The controller sets the first three; ``reframe`` is the run's.

* ``strength`` λ ∈ [0, 1]: the privacy/utility trade-off the generator is conditioned on (FiLM,
  Perez et al. 2018, arXiv:1709.07871); λ = 0 passes the (reframed) input through unchanged,
  λ = 1 is the strongest anonymization the generator learned.
* ``noise`` ≥ 0: Gaussian noise added to the anonymized float modalities, in units of each
  sample's own standard deviation.
* ``discard`` ∈ [0, 1): the share of each sample's entries (float values, or log tokens)
  discarded (set to 0, the padding token for logs).
* ``reframe`` r ∈ [0, 1]: the scale of the random orientation, gain and offset each sample's
  sensor windows are moved to before the generator reads them
  (:mod:`~fedmosaic.privacy.anonymizer.reframe`); 0 leaves them as recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AnonymizerKnobs:
    """The four knobs (module docstring).

    Raises:
        ValueError: If a knob is outside its range.
    """

    strength: float = 1.0
    noise: float = 0.0
    discard: float = 0.0
    reframe: float = 0.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AnonymizerKnobs:
        """The knobs a training message or a run config names; a missing one keeps its default.

        Names: ``strength``, ``noise``, ``discard``, ``reframe``, or ``anonymizer-strength``,
        ....

        Raises:
            ValueError: If a knob is not a number or lies outside its range.
        """
        knobs = {}
        for name in ("strength", "noise", "discard", "reframe"):
            value = values.get(name, values.get(f"anonymizer-{name}"))
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"anonymizer knob {name!r} must be a number, got {value!r}")
            knobs[name] = float(value)
        return cls(**knobs)

    def to_mapping(self) -> dict[str, float]:
        """The knobs as a training message carries them: ``{"strength": λ, ..., "reframe": r}``."""
        return {"strength": self.strength, "noise": self.noise, "discard": self.discard,
                "reframe": self.reframe}

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"anonymizer strength must lie in [0, 1], got {self.strength}")
        if not (0.0 <= self.noise < math.inf):
            raise ValueError(f"anonymizer noise must be finite and >= 0, got {self.noise}")
        if not 0.0 <= self.discard < 1.0:
            raise ValueError(f"anonymizer discard ratio must lie in [0, 1), got {self.discard}")
        if not 0.0 <= self.reframe <= 1.0:
            raise ValueError(f"anonymizer reframe must lie in [0, 1], got {self.reframe}")
