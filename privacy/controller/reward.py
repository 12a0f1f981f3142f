r"""The controller's reward, with weights that move over the run as ALPINE's do.

Per device and round,

.. math::

    r = w_u(\tau)\,\Delta U - w_p(\tau, \rho)\,\max(\ell, 0) - w_\varepsilon\, e

with :math:`\Delta U` the central accuracy gain in points/10 (:data:`UTILITY_SCALE`),
:math:`\ell` the leakage probe, :math:`e` the share of the device's cap the round spent,
:math:`\tau` the round fraction and :math:`\rho` the device's risk. As ALPINE §4.4.3 adapts its
weights online (privacy first early in a run, utility later; a riskier context raises the
privacy weight):

.. math::

    w_u(\tau) = \tfrac12 + \tau, \qquad
    w_p(\tau, \rho) = w_p^0\,(\tfrac32 - \tau)\,(1 + \rho), \qquad w_\varepsilon = w_\varepsilon^0

where :math:`w_p^0` and :math:`w_\varepsilon^0` are ``controller-privacy-weight`` and
``controller-epsilon-weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

UTILITY_SCALE = 10.0
"""Accuracy gains enter the reward in tenths of a unit (points / 10): 0.01 → 0.1."""


@dataclass(frozen=True)
class RewardWeights:
    r""":math:`w_u, w_p, w_\varepsilon` of one device in one round."""

    utility: float
    privacy: float
    epsilon: float


def reward_weights(round_fraction: float, risk: float, privacy_weight: float,
                   epsilon_weight: float) -> RewardWeights:
    """The weights at round fraction ``round_fraction`` and risk ``risk`` (module docstring)."""
    tau, rho = min(1.0, max(0.0, round_fraction)), min(1.0, max(0.0, risk))
    return RewardWeights(utility=0.5 + tau, privacy=privacy_weight * (1.5 - tau) * (1.0 + rho),
                         epsilon=epsilon_weight)


def controller_reward(accuracy_gain: float, leakage: float, spend: float,
                      weights: RewardWeights) -> float:
    r""":math:`w_u \Delta U - w_p \max(\ell, 0) - w_\varepsilon e` (module docstring)."""
    return (weights.utility * UTILITY_SCALE * accuracy_gain - weights.privacy * max(leakage, 0.0)
            - weights.epsilon * spend)
