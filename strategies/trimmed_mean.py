"""Coordinate-wise trimmed mean, plain or weighted.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
arXiv:1803.01498.

For ``n`` updates and trim fraction ``β``, every coordinate drops its ``k = ⌊β n⌋`` smallest
and ``k`` largest values and averages the remaining ``n − 2k``:

    w[j] = Σ_{i ∈ kept(j)} a_i w_i[j] / Σ_{i ∈ kept(j)} a_i

with weights ``a_i = 1`` (:class:`TrimmedMean`, equal to Flower's ``FedTrimmedAvg`` and to
``scipy.stats.trim_mean``) or any positive per-client weights (used by ``MoEFusion``).
It tolerates up to ``k`` arbitrary (Byzantine) values per coordinate.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg


def weighted_trimmed_mean(stack: np.ndarray, beta: float,
                          weights: np.ndarray | None = None) -> np.ndarray:
    """Trimmed mean along axis 0 of ``stack`` (``n`` updates), optionally weighted.

    Args:
        stack: ``(n, ...)`` values, one row per client.
        beta: share cut at each end, in ``[0, 0.5)``.
        weights: ``(n,)`` positive weights (``None``: all equal).

    Returns:
        The ``stack.shape[1:]`` result in ``stack``'s dtype.

    Raises:
        ValueError: if ``beta`` is out of range, nothing would remain, or a weight is not > 0.
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must lie in [0, 0.5), got {beta}")
    count = stack.shape[0]
    cut = int(beta * count)
    if count - 2 * cut < 1:
        raise ValueError(f"trimming {cut} of {count} values at each end leaves none")
    weights = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,) or not (weights > 0).all():
        raise ValueError(f"weights must be {count} values > 0, got {weights!r}")
    kept = np.argsort(stack, axis=0, kind="stable")[cut:count - cut]
    values = np.take_along_axis(stack, kept, axis=0).astype(np.float64)
    kept_weights = weights[kept]
    result = (values * kept_weights).sum(axis=0) / kept_weights.sum(axis=0)
    return result.astype(stack.dtype)


class TrimmedMean(FedAvg):
    """FedAvg's sampling and metrics with a coordinate-wise trimmed mean of the weights.

    Args:
        beta: share of values cut at each end of every coordinate, in ``[0, 0.5)``.
        **kwargs: any ``FedAvg`` argument.
    """

    def __init__(self, beta: float = 0.2, **kwargs: object) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must lie in [0, 0.5), got {beta}")
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.beta = beta

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Trimmed mean of the valid replies' arrays; example-weighted mean of their metrics."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        first = valid[0].content[self.arrayrecord_key]
        arrays = ArrayRecord({
            key: Array(weighted_trimmed_mean(
                np.stack([m.content[self.arrayrecord_key][key].numpy() for m in valid]),
                self.beta))
            for key in first.keys()
        })
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return arrays, metrics
