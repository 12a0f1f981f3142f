r"""Simulated device latency: stragglers and a log-normal spread, on a clock of its own.

A real fleet is slow and uneven; a 2-core simulation is neither. With ``straggler-fraction``
or ``latency-sigma`` set, every training a device does takes a simulated duration

.. math:: T = 1\,\mathrm{s} \cdot e^{\sigma Z} \cdot (\text{straggler-slowdown if the device
   is a straggler}),\qquad Z \sim \mathcal N(0, 1),

with the stragglers a ``straggler-fraction`` share of the devices drawn from ``seed`` and
:math:`Z` drawn from ``(seed, device, draw)``: the same durations in every run of the same
config, whatever the machine does. Devices are ranked by node id (in-process runs number
them 1..N in partition order). The server times its rounds on this clock:

* synchronous (:class:`SimulatedClock`, a stage of the chain): a round lasts as long as the
  slowest device it sent work to, :math:`\max_i T_i`;
* asynchronous (``server/async_rounds.py``): a reply arrives :math:`T` after its work was sent,
  and the server handles replies in the order they arrive on this clock.

Each round's end time is ``simulated_seconds`` in the history; comparing modes on it is the
comparison a fleet with these latencies would see, and it does not depend on how many CPUs
the simulation has. Real compute time is in ``seconds``, as always.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic.config import RunConfig
from fedmosaic.strategies.wrapper import StrategyWrapper

_STRAGGLER_STREAM, _DURATION_STREAM = 71, 72


class LatencyModel:
    """Simulated training durations of the devices ``node_ids`` (module docstring).

    Args:
        config: ``seed``, ``straggler-fraction``, ``straggler-slowdown``, ``latency-sigma``.
        node_ids: Every device's node id.
    """

    def __init__(self, config: RunConfig, node_ids: Sequence[int]) -> None:
        self.seed = config.seed
        self.sigma = config.latency_sigma
        self.slowdown = config.straggler_slowdown
        self.rank = {node: i for i, node in enumerate(sorted(node_ids))}
        count = round(config.straggler_fraction * len(self.rank))
        chosen = np.random.default_rng([self.seed, _STRAGGLER_STREAM]).permutation(
            len(self.rank))[:count]
        self.stragglers = frozenset(int(i) for i in chosen)

    def _rank(self, node: int) -> int:
        """``node``'s index; a device first seen later (it connected late) gets the next one."""
        return self.rank.setdefault(node, len(self.rank))

    def is_straggler(self, node: int) -> bool:
        """Whether ``node`` is one of the slow devices."""
        return self._rank(node) in self.stragglers

    def seconds(self, node: int, draw: int) -> float:
        """The simulated duration of ``node``'s ``draw``-th training."""
        rank = self._rank(node)
        spread = math.exp(self.sigma * np.random.default_rng(
            [self.seed, _DURATION_STREAM, rank, draw]).standard_normal())
        return spread * (self.slowdown if rank in self.stragglers else 1.0)


class SimulatedClock(StrategyWrapper):
    """The simulated time at which each round ends (``at[r]``, seconds from the start).

    As a stage of a synchronous chain it times each round itself: the nodes ``configure_train``
    sent work to, their durations for that round, and the round lasts the longest of them.
    The asynchronous loop sets ``at`` itself (``synchronous=False``).
    """

    def __init__(self, strategy: Strategy, config: RunConfig, synchronous: bool = True) -> None:
        super().__init__(strategy)
        self.config = config
        self.synchronous = synchronous
        self.model: LatencyModel | None = None
        self.at: dict[int, float] = {}
        self._sent: dict[int, list[int]] = {}

    def latency(self, grid: Grid) -> LatencyModel:
        """The latency model of ``grid``'s devices (drawn once, from the first node list)."""
        if self.model is None:
            self.model = LatencyModel(self.config, list(grid.get_node_ids()))
        return self.model

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Configure through the wrapped strategy; note who was sent work."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.synchronous:
            self.latency(grid)
            self._sent[server_round] = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Advance the clock by the round's slowest device, then aggregate."""
        if self.synchronous and self.model is not None:
            durations = [self.model.seconds(node, server_round)
                         for node in self._sent.pop(server_round, [])]
            self.at[server_round] = self.at.get(server_round - 1, 0.0) + max(durations,
                                                                              default=0.0)
        return self.strategy.aggregate_train(server_round, replies)
