r"""A Rényi privacy filter: a hard (ε, δ) cap that stays valid when budgets are chosen adaptively.

With a controller, each round's σ (and so its privacy cost) is chosen from what earlier rounds
released. The usual composition theorems assume the costs were fixed in advance; a *privacy
filter* (Rogers et al. 2016; Feldman & Zrnic 2021, "Individual Privacy Accounting via a Rényi
Filter", arXiv:2008.11193) is a stopping rule under which adaptively chosen costs still compose
to a fixed guarantee.

Let :math:`\rho_t(\alpha)` be round t's Rényi DP at order α (here the subsampled Gaussian's,
:func:`~fedmosaic.privacy.accounting.rdp_of`), chosen after seeing rounds :math:`< t`, and
:math:`S_T(\alpha) = \sum_{t \le T} \rho_t(\alpha)`. Under the data set D the privacy loss
:math:`L_T` satisfies that :math:`M_T(\alpha) = \exp((\alpha - 1)(L_T - S_T(\alpha)))` is a
non-negative supermartingale (Feldman & Zrnic, Lemma 3.2; Whitehouse et al. 2023,
"Fully-Adaptive Composition in Differential Privacy", arXiv:2203.05481, §4), so by Ville's
inequality :math:`P(\exists T: L_T \ge S_T(\alpha) + \log(1/\delta_\alpha)/(\alpha - 1))
\le \delta_\alpha`. Over a fixed grid :math:`A` of orders with :math:`\delta_\alpha =
\delta / |A|` (a union bound), the *filter ε* of a history

.. math::

    \varepsilon_F(S) = \min_{\alpha \in A} \; S(\alpha) + \frac{\log(|A| / \delta)}{\alpha - 1}

bounds the loss: :math:`P(L_T > \varepsilon_F(S_T)) \le \delta`. The filter admits a round only
if :math:`\varepsilon_F` of the history *with* that round stays within the cap, so whatever the
controller chooses, :math:`P(L > \varepsilon_{\mathrm{cap}}) \le \delta` and the device's run
is :math:`(\varepsilon_{\mathrm{cap}}, \delta)`-DP.

The price of adaptivity is the conversion: :math:`\log(|A|/\delta)` instead of the tighter
non-adaptive conversion of Balle et al. 2020 that :func:`~fedmosaic.privacy.accounting.
epsilon_spent` uses for fixed plans, so a filter ε is larger than the RDP accountant's for
the same history (``tests/privacy/test_renyi_filter.py`` measures by how much).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FILTER_ORDERS = (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0,
                 64.0, 128.0, 256.0)
"""The fixed grid :math:`A` of Rényi orders (fixed before the run: the union bound needs it)."""


def filter_epsilon(rdp: Sequence[float] | np.ndarray, delta: float,
                   orders: Sequence[float] = FILTER_ORDERS) -> float:
    r"""The filter ε :math:`\min_\alpha S(\alpha) + \log(|A|/\delta)/(\alpha - 1)` (docstring).

    Args:
        rdp: :math:`S(\alpha)` at each of ``orders`` (the history's summed Rényi DP).
        delta: δ in ``(0, 1)``.
        orders: The grid :math:`A`, every order ``> 1``.

    Raises:
        ValueError: If ``delta`` is out of range, an order is ``<= 1`` or the lengths differ.

    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    values, grid = np.asarray(rdp, dtype=float), np.asarray(orders, dtype=float)
    if values.shape != grid.shape:
        raise ValueError(f"need one Rényi DP value per order: {len(grid)} orders, got "
                         f"{values.shape}")
    if np.any(grid <= 1.0):
        raise ValueError(f"Rényi orders must be > 1, got {grid.tolist()}")
    return float(np.min(values + math.log(len(grid) / delta) / (grid - 1.0)))


def admits(rdp_after: Sequence[float] | np.ndarray, delta: float, cap: float,
           orders: Sequence[float] = FILTER_ORDERS, tolerance: float = 1e-6) -> bool:
    """Whether the filter admits a round whose history would then cost ``rdp_after``.

    ``tolerance`` is relative slack for floating-point rounding between two accountants.
    """
    return filter_epsilon(rdp_after, delta, orders) <= cap * (1.0 + tolerance)
