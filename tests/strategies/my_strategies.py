"""The README's "Writing a strategy" example, kept here so a test runs it verbatim."""

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg


class CoordinateMedian(FedAvg):
    """Coordinate-wise median of the clients' weights (Yin et al. 2018, arXiv:1803.01498)."""

    def aggregate_train(self, server_round, replies):
        replies = [r for r in replies if not r.has_error()]
        if not replies:
            return None, None  # the global model stays as it was
        weights = [r.content[self.arrayrecord_key] for r in replies]
        arrays = ArrayRecord({
            key: Array(np.median([w[key].numpy() for w in weights], axis=0).astype(np.float32))
            for key in weights[0].keys()
        })
        metrics = self.train_metrics_aggr_fn([r.content for r in replies],
                                             self.weighted_by_key)
        return arrays, metrics
