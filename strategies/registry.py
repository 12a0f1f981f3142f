"""Map the run config's ``strategy`` name to a configured Flower strategy.

``fedavg`` is Flower's ``FedAvg`` (McMahan et al. 2017, arXiv:1602.05629) and ``fedprox`` is
Flower's ``FedProx`` (Li et al. 2020, arXiv:1812.06127), which sends ``proximal-mu`` to the
clients; our ClientApp adds the proximal term ``mu/2 * ||w - w_global||^2`` to the local loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from fedmosaic import records
from fedmosaic.config import RunConfig

STRATEGIES: dict[str, Callable[..., Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx}


def build_strategy(config: RunConfig) -> Strategy:
    """The strategy named by ``config.strategy`` with sampling set from the run config.

    Every sampled round waits for ``ceil(fraction * num_clients)`` nodes (at least one), so
    round 1 does not start before the SuperNodes have connected.
    """
    if config.strategy not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {config.strategy!r}; expected one of {sorted(STRATEGIES)}"
        )
    kwargs: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": _nodes(config.fraction_train, config.num_clients),
        "min_evaluate_nodes": _nodes(config.fraction_evaluate, config.num_clients),
        "min_available_nodes": config.num_clients,
        "weighted_by_key": records.NUM_EXAMPLES,
        "arrayrecord_key": records.ARRAYS,
        "configrecord_key": records.CONFIG,
    }
    if config.strategy == "fedprox":
        kwargs["proximal_mu"] = config.proximal_mu
    return STRATEGIES[config.strategy](**kwargs)


def _nodes(fraction: float, num_clients: int) -> int:
    """Nodes a round samples: ``max(1, ceil(fraction * num_clients))``, or 0 if disabled."""
    if fraction == 0.0:
        return 0
    return max(1, math.ceil(fraction * num_clients - 1e-9))
