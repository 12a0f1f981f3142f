r"""How an edge combines its devices' accepted deltas: weighted mean, trimmed mean or median.

``edge-aggregation`` picks it, so robust aggregation can run at the edge, at the cloud
(``strategy``), or both:

* ``mean``: :func:`~fedmosaic.server.edge.aggregation.weighted_average`,
  :math:`\sum_i n_i \Delta_i / \sum_i n_i` (hierarchical FedAvg);
* ``trimmed-mean``: per coordinate, drop the :math:`\lfloor \beta m \rfloor` smallest and
  largest of the edge's :math:`m` values and average the rest, unweighted (Yin et al. 2018,
  arXiv:1803.01498; :func:`~fedmosaic.strategies.kernels.trimmed_mean`), with
  :math:`\beta` = ``trim-fraction``;
* ``median``: the coordinate-wise median (Yin et al. 2018), as Flower's ``FedMedian``.

The robust rules are unweighted, like their cloud counterparts: a device's claimed example
count must not buy it a larger say. The edge still reports :math:`N_{\mathrm{edge}} = \sum_i
n_i` over its accepted devices as its weight towards the cloud.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedmosaic.config import EDGE_AGGREGATIONS
from fedmosaic.server.edge.aggregation import Arrays, weighted_average
from fedmosaic.strategies import kernels

Combiner = Callable[[Sequence[Arrays], Sequence[int]], Arrays]
"""``combine(deltas, num_examples)``: one delta from the accepted devices' deltas."""


def coordinate_wise(rule: Callable[[np.ndarray], np.ndarray]) -> Combiner:
    """A combiner applying ``rule`` to the ``(m, P)`` float64 stack of the flattened deltas.

    See :func:`~fedmosaic.strategies.kernels.combine`; results are cast to each array's dtype.
    """

    def combine(deltas: Sequence[Arrays], num_examples: Sequence[int]) -> Arrays:
        if not deltas:
            raise ValueError("an edge needs at least one accepted delta to combine, got none")
        return kernels.combine(deltas, rule, dtype=np.float64)

    return combine


def edge_combiner(method: str, trim_fraction: float) -> Combiner:
    """The combiner ``edge-aggregation = method`` (module docstring).

    Raises:
        ValueError: If ``method`` is unknown or ``trim_fraction`` is outside ``[0, 0.5)``.
    """
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must lie in [0, 0.5), got {trim_fraction}")
    if method == "mean":
        return weighted_average
    if method == "trimmed-mean":
        return coordinate_wise(lambda stack: kernels.trimmed_mean(stack, trim_fraction))
    if method == "median":
        return coordinate_wise(kernels.median)
    raise ValueError(f"edge-aggregation must be one of {EDGE_AGGREGATIONS}, got {method!r}")
