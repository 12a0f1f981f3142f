r"""FedAvg and FedProx whose weighted mean reads each reply's arrays decoded once; FedAvgM.

McMahan et al. 2017 (arXiv:1602.05629); FedProx, Li et al. 2020 (arXiv:1812.06127):

.. math:: \bar w = \sum_i n_i w_i / \sum_i n_i

with :math:`n_i` a reply's ``num-examples``. Flower's ``FedAvg`` decodes every array of every
reply again (``Array.numpy()``, a ``numpy.load`` each) after the risk stage and validation
have decoded them; here the mean is :func:`~fedmosaic.strategies.kernels.weighted_average`
over the arrays those stages already decoded (:func:`~fedmosaic.arrays.record_arrays`),
accumulated in float32 as Flower's is. Replies holding any array other than float32 (integer
buffers, float64), or a weight <= 0, are averaged by Flower's own code, whose result types
differ there. Sampling, configuration, the reply checks and the metrics are Flower's.

FedAvgM (Hsu et al. 2019, arXiv:1909.06335) is Flower's, with server step η and momentum β:
:math:`v \leftarrow \beta v + (w - \bar w)`, :math:`w \leftarrow w - \eta v`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower

from fedmosaic.arrays import record_arrays
from fedmosaic.strategies import kernels


class SharedDecodeMean:
    """``aggregate_train`` of the FedAvg family over the replies' shared decoded arrays."""

    weighted_by_key: str

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The example-weighted mean of the valid replies' arrays and of their metrics."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)  # type: ignore[attr-defined]
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        weights = [float(next(iter(c.metric_records.values()))[self.weighted_by_key])
                   for c in contents]
        # Flower's checks left one ArrayRecord per reply
        updates = [record_arrays(next(iter(c.array_records.values()))) for c in contents]
        if min(weights) <= 0 or any(
                v.dtype != np.float32 for update in updates for v in update.values()):
            return super().aggregate_train(server_round, valid)  # type: ignore[misc]
        mean = kernels.weighted_average(updates, weights)
        metrics = self.train_metrics_aggr_fn(  # type: ignore[attr-defined]
            contents, self.weighted_by_key)
        return ArrayRecord({key: Array(value) for key, value in mean.items()}), metrics


class FedAvg(SharedDecodeMean, flower.FedAvg):
    """Flower's ``FedAvg`` with :class:`SharedDecodeMean`'s aggregation."""


class FedProx(SharedDecodeMean, flower.FedProx):
    """Flower's ``FedProx`` (it sends ``proximal-mu``) with :class:`SharedDecodeMean`'s."""


class FedAvgM(flower.FedAvgM):
    """Flower's ``FedAvgM``, stepping from the model the server sends each round.

    Flower's keeps its own last output as the model to step from; the server may send another
    (a resumed run's checkpoint, the asynchronous loop's current version), so every
    ``configure_train`` takes the model it is given.
    """

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's sampling, with ``arrays`` as the model the next step starts from."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

