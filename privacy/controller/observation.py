r"""What the controller sees of a device each round, and what it decides: the two vectors.

An observation holds only what the server may see (``server/controller_stage.py`` builds it):
the ledger's own account of the device's spend, the risk perception's score and criteria, the
central evaluation's change, a server-side leakage probe on the device's updates (DP-SGD's
outputs), the update statistics and the anonymizer's gradient signal. Never a device's data or
its own statistics.

An action is a vector :math:`a \in [-1, 1]^4` (the policies' common currency, and what the
TD3/DDPG actors output), decoded by :func:`decode_action`:

* spend share :math:`s = \mathrm{clip}(s_{even} \cdot 4^{a_0}, s_{min}, 1)` of the device's
  remaining ε, around the even share :math:`s_{even} = 1 / (\text{rounds left})`: :math:`a_0 = 0`
  spends evenly, :math:`\pm 1` four times more or less;
* the anonymizer's knobs: strength :math:`\lambda = (a_1 + 1)/2`, noise
  :math:`(a_2 + 1)/2 \cdot` :data:`MAX_NOISE`, discard :math:`(a_3 + 1)/2 \cdot`
  :data:`MAX_DISCARD`.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np

from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs

MIN_SHARE = 0.001
"""Smallest share of the remaining ε a device is told to spend in a round."""
MAX_NOISE = 1.0
"""Anonymizer noise at :math:`a_2 = 1`, in units of each sample's std."""
MAX_DISCARD = 0.5
"""Anonymizer discard ratio at :math:`a_3 = 1`."""
ACTION_SIZE = 4
"""Spend, strength, noise, discard."""


@dataclass(frozen=True)
class ControllerObservation:
    r"""One device's observation in one round (module docstring); each field has its range.

    Attributes:
        round_fraction: Rounds done over rounds planned, in [0, 1].
        budget_left: :math:`1 - \varepsilon_{spent} / \varepsilon_{cap}` by the ledger.
        last_spend: The share of its cap the device's last round spent.
        risk: The fused risk score; ``risk_*`` its four criteria (all in [0, 1]).
        accuracy_change: Central accuracy change over the last round, in [-1, 1].
        loss_change: Central loss change over the last round, clipped to [-5, 5].
        leakage: The linkage probe, in [-2, 2] (``server/controller_stage.py``).
        update_norm: The device's update norm over the round's median, clipped to [0, 10].
        cosine_to_aggregate: Its update's cosine to the aggregate, in [-1, 1].
        generator_update_norm: The anonymizer generator's last averaged update norm.
        critics_update_norm: The anonymizer critics' last averaged update norm.

    """

    round_fraction: float = 0.0
    budget_left: float = 1.0
    last_spend: float = 0.0
    risk: float = 0.0
    risk_channel: float = 0.0
    risk_sensitivity: float = 0.0
    risk_context: float = 0.0
    risk_resources: float = 0.0
    accuracy_change: float = 0.0
    loss_change: float = 0.0
    leakage: float = 0.0
    update_norm: float = 0.0
    cosine_to_aggregate: float = 0.0
    generator_update_norm: float = 0.0
    critics_update_norm: float = 0.0

    def as_array(self) -> np.ndarray:
        """The observation as ``float32``, non-finite values as 0, clipped to the bounds."""
        values = np.nan_to_num(np.asarray(astuple(self), dtype=np.float64), nan=0.0,
                               posinf=0.0, neginf=0.0)
        return np.clip(values, OBSERVATION_LOW, OBSERVATION_HIGH).astype(np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> ControllerObservation:
        """Inverse of :meth:`as_array` (for the environment and tests)."""
        return cls(*(float(v) for v in np.asarray(values, dtype=np.float64)))


OBSERVATION_FIELDS = tuple(f.name for f in fields(ControllerObservation))
"""Field names in vector order."""
_BOUNDS = {"accuracy_change": (-1.0, 1.0), "loss_change": (-5.0, 5.0), "leakage": (-2.0, 2.0),
           "update_norm": (0.0, 10.0), "cosine_to_aggregate": (-1.0, 1.0),
           "generator_update_norm": (0.0, 10.0), "critics_update_norm": (0.0, 10.0)}
OBSERVATION_LOW = np.array([_BOUNDS.get(n, (0.0, 1.0))[0] for n in OBSERVATION_FIELDS],
                           dtype=np.float32)
OBSERVATION_HIGH = np.array([_BOUNDS.get(n, (0.0, 1.0))[1] for n in OBSERVATION_FIELDS],
                            dtype=np.float32)


@dataclass(frozen=True)
class ControllerAction:
    """A decoded action: this round's spend share and, with the anonymizer, its knobs."""

    spend_share: float
    knobs: AnonymizerKnobs

    def to_mapping(self) -> dict[str, float]:
        """``{"spend-share": s, "strength": λ, "noise": ν, "discard": p, "reframe": r}``."""
        return {"spend-share": self.spend_share, **self.knobs.to_mapping()}


def even_share(server_round: int, num_rounds: int) -> float:
    """The share of the remaining ε that spends it evenly: ``1 / rounds left`` (this one too)."""
    return 1.0 / max(1, num_rounds - server_round + 1)


def decode_action(vector: np.ndarray, server_round: int, num_rounds: int) -> ControllerAction:
    r"""Map :math:`a \in [-1, 1]^4` to spend share and knobs (module docstring).

    Raises:
        ValueError: If ``vector`` does not hold :data:`ACTION_SIZE` finite numbers.
    """
    values = np.asarray(vector, dtype=np.float64).reshape(-1)
    if values.shape != (ACTION_SIZE,) or not np.all(np.isfinite(values)):
        raise ValueError(f"an action is {ACTION_SIZE} finite numbers in [-1, 1], got "
                         f"{values.tolist()}")
    a = np.clip(values, -1.0, 1.0)
    share = min(1.0, max(MIN_SHARE, even_share(server_round, num_rounds) * 4.0 ** a[0]))
    return ControllerAction(share, AnonymizerKnobs(
        strength=float((a[1] + 1) / 2), noise=float((a[2] + 1) / 2 * MAX_NOISE),
        discard=float((a[3] + 1) / 2 * MAX_DISCARD)))
