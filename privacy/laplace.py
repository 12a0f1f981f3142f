r"""The bounded Laplace mechanism: ε-DP releases confined to a known domain ``[l, u]``.

Holohan, Antonatos, Braghin, Mac Aonghusa (2018), "The Bounded Laplace Mechanism in
Differential Privacy", Journal of Privacy and Confidentiality 10(1), arXiv:1808.10410.

For a true value :math:`x \in [l, u]` the mechanism outputs :math:`y \in [l, u]` with density

.. math::
    f_x(y) = \frac{1}{C_b(x)} \frac{1}{2b} e^{-|y - x| / b}, \qquad
    C_b(x) = \int_l^u \frac{1}{2b} e^{-|y - x| / b}\, dy
           = 1 - \tfrac12\left(e^{-(x - l)/b} + e^{-(u - x)/b}\right),

a Laplace density truncated to the domain and renormalised. Renormalising leaks: the privacy
loss of neighbouring inputs :math:`|x - x'| \le \Delta` is (Holohan et al., Sec. 4)

.. math::
    \varepsilon(b) = \frac{\Delta}{b} + \ln \frac{C_b(l + \Delta)}{C_b(l)},

so the plain Laplace scale :math:`b = \Delta / \varepsilon` is not enough whenever
:math:`\Delta < u - l`. :func:`calibrate_scale` solves :math:`\varepsilon(b) = \varepsilon`
for :math:`b` (``scipy.optimize.brentq``; :math:`\varepsilon(b)` decreases in :math:`b`). With
:math:`\Delta = u - l` (any two readings are neighbours, the local-DP case) the second term is
zero and :math:`b = \Delta / \varepsilon`.

Sampling is by inverse transform: :math:`y = F^{-1}(U)` with
:math:`U \sim \mathcal{U}[F(l), F(u)]` and :math:`F` the Laplace CDF centred at :math:`x`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


def normaliser(x: np.ndarray | float, scale: float, lower: float, upper: float) -> np.ndarray:
    r"""Probability mass :math:`C_b(x)` a Laplace(x, b) puts on ``[lower, upper]``.

    Args:
        x: Centre(s) inside ``[lower, upper]``.
        scale: :math:`b > 0`.
        lower: :math:`l`.
        upper: :math:`u > l`.

    Returns:
        :math:`1 - \tfrac12(e^{-(x-l)/b} + e^{-(u-x)/b})`, same shape as ``x``.

    """
    x = np.asarray(x, dtype=float)
    return 1.0 - 0.5 * (np.exp(-(x - lower) / scale) + np.exp(-(upper - x) / scale))


def privacy_loss(scale: float, sensitivity: float, lower: float, upper: float) -> float:
    r"""Worst-case privacy loss :math:`\varepsilon(b)` of the bounded Laplace mechanism.

    :math:`\Delta / b + \ln(C_b(l + \Delta) / C_b(l))` (module docstring).

    Args:
        scale: :math:`b > 0`.
        sensitivity: :math:`\Delta`, with :math:`0 < \Delta \le u - l`.
        lower: :math:`l`.
        upper: :math:`u`.

    Returns:
        The ε the mechanism with scale ``scale`` satisfies.

    """
    _check_domain(sensitivity, lower, upper)
    if not scale > 0.0:
        raise ValueError(f"scale must be > 0, got {scale}")
    ratio = normaliser(lower + sensitivity, scale, lower, upper) / normaliser(
        lower, scale, lower, upper
    )
    return sensitivity / scale + float(np.log(ratio))


def calibrate_scale(epsilon: float, sensitivity: float, lower: float, upper: float) -> float:
    r"""Smallest scale :math:`b` whose bounded Laplace mechanism is ``epsilon``-DP.

    Solves :math:`\varepsilon(b) = \varepsilon` (Holohan et al. 2018, Sec. 4) by bracketing
    from :math:`b = \Delta / \varepsilon`, where :math:`\varepsilon(b) \ge \varepsilon`.

    Args:
        epsilon: Target :math:`\varepsilon > 0`.
        sensitivity: :math:`\Delta`, with :math:`0 < \Delta \le u - l`.
        lower: :math:`l`.
        upper: :math:`u`.

    Returns:
        :math:`b`.

    Raises:
        ValueError: If ``epsilon <= 0`` or the domain or sensitivity is invalid.

    """
    if not (epsilon > 0.0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    _check_domain(sensitivity, lower, upper)
    low = sensitivity / epsilon
    if privacy_loss(low, sensitivity, lower, upper) <= epsilon:
        return low
    high = 2.0 * low
    while privacy_loss(high, sensitivity, lower, upper) > epsilon:
        high *= 2.0
    return float(optimize.brentq(
        lambda b: privacy_loss(b, sensitivity, lower, upper) - epsilon, low, high,
        xtol=1e-12 * high, rtol=1e-12,
    ))


@dataclass(frozen=True)
class BoundedLaplace:
    r"""An ε-DP release of values in ``[lower, upper]`` with output in ``[lower, upper]``.

    Attributes:
        epsilon: Privacy parameter :math:`\varepsilon > 0` of one release.
        lower: Domain lower bound :math:`l`.
        upper: Domain upper bound :math:`u > l`.
        sensitivity: :math:`\Delta \in (0, u - l]`; ``None`` means :math:`u - l` (local DP:
            any two values of the domain are neighbours).

    Raises:
        ValueError: If a parameter is out of range.

    """

    epsilon: float
    lower: float
    upper: float
    sensitivity: float | None = None

    def __post_init__(self) -> None:
        if self.sensitivity is None:
            object.__setattr__(self, "sensitivity", self.upper - self.lower)
        _check_domain(self.sensitivity, self.lower, self.upper)
        if not (self.epsilon > 0.0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be a finite number > 0, got {self.epsilon}")

    @property
    def scale(self) -> float:
        """The calibrated Laplace scale :math:`b` (:func:`calibrate_scale`)."""
        return calibrate_scale(self.epsilon, self.sensitivity, self.lower, self.upper)

    def density(self, y: np.ndarray | float, x: float) -> np.ndarray:
        r"""The output density :math:`f_x(y)` (zero outside ``[lower, upper]``)."""
        scale = self.scale
        y = np.asarray(y, dtype=float)
        inside = (y >= self.lower) & (y <= self.upper)
        value = np.exp(-np.abs(y - x) / scale) / (
            2.0 * scale * normaliser(x, scale, self.lower, self.upper)
        )
        return np.where(inside, value, 0.0)

    def release(self, values: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
        """Release each of ``values`` independently (each release costs ``epsilon``).

        Args:
            values: True values, each inside ``[lower, upper]``.
            rng: The randomness.

        Returns:
            Noisy values, same shape as ``values``, all inside ``[lower, upper]``.

        Raises:
            ValueError: If a value is outside ``[lower, upper]`` or not finite.

        """
        x = np.asarray(values, dtype=float)
        if not np.all(np.isfinite(x)) or np.any((x < self.lower) | (x > self.upper)):
            raise ValueError(
                f"values must be finite and inside [{self.lower}, {self.upper}], got range "
                f"[{np.min(x)}, {np.max(x)}]"
            )
        scale = self.scale
        low = stats.laplace.cdf(self.lower, loc=x, scale=scale)
        high = stats.laplace.cdf(self.upper, loc=x, scale=scale)
        uniform = rng.uniform(size=x.shape)
        noisy = stats.laplace.ppf(low + uniform * (high - low), loc=x, scale=scale)
        return np.clip(noisy, self.lower, self.upper)


def _check_domain(sensitivity: float, lower: float, upper: float) -> None:
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"need finite bounds with lower < upper, got [{lower}, {upper}]")
    if not 0.0 < sensitivity <= upper - lower:
        raise ValueError(
            f"sensitivity must lie in (0, upper - lower] = (0, {upper - lower}], got {sensitivity}"
        )
