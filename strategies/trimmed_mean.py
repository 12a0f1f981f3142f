"""Coordinate-wise trimmed mean, plain or weighted.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
arXiv:1803.01498.

For ``n`` updates and trim fraction ``β``, every coordinate drops its ``k = ⌊β n⌋`` smallest
and ``k`` largest values and averages the remaining ``n − 2k``:

    w[j] = Σ_{i ∈ kept(j)} a_i w_i[j] / Σ_{i ∈ kept(j)} a_i

with weights ``a_i = 1`` (:class:`TrimmedMean`, equal to Flower's ``FedTrimmedAvg`` and to
``scipy.stats.trim_mean``) or any positive per-client weights (used by ``MoEFusion``); the
kernel is :func:`fedmosaic.strategies.kernels.trimmed_mean`, one pass over all parameters.
It tolerates up to ``k`` arbitrary (Byzantine) values per coordinate.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedmosaic.arrays import record_arrays
from fedmosaic.strategies import kernels


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
        arrays = ArrayRecord({key: Array(value) for key, value in kernels.combine(
            [record_arrays(m.content[self.arrayrecord_key]) for m in valid],
            lambda stack: kernels.trimmed_mean(stack, self.beta)).items()})
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return arrays, metrics
