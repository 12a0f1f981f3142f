"""Simulation only: the omniscient colluding attacker (ALIE, IPM) as a stage of the server chain.

ALIE and IPM assume an attacker that sees the round's honest updates; no device can, so this
stage plays that attacker on the server side. The malicious devices train honestly and tag
their reply with ``records.ATTACKER_TAG`` (``clients/poisoning.py``); after collection
:class:`CollusionSimulation` replaces every tagged reply's arrays with the crafted update (and
removes the tag) before validation and the strategy see it. The chain installs it only when
``attack`` is ``alie`` or ``ipm``; it is a test harness, never part of a real deployment.

``alie``  "A Little Is Enough" (Baruch et al. 2019, arXiv:1902.06156): every malicious client
          sends ``μ − z σ``, with ``μ, σ`` the coordinate-wise mean and standard deviation of
          the ``n`` honest updates of the round and ``z = Φ⁻¹((n − s) / n)``, ``s = ⌊n/2 + 1⌋ − m``
          for ``m`` attackers.
``ipm``   inner product manipulation (Xie et al. 2020, arXiv:1903.03936): every malicious
          client sends ``w_g − ε μ_Δ``, ``μ_Δ`` the mean honest update, ε = :data:`IPM_EPSILON`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from scipy.stats import norm

from fedmosaic import records
from fedmosaic.config import COLLUDING_ATTACKS
from fedmosaic.strategies.wrapper import StrategyWrapper

IPM_EPSILON = 10.0
"""ε of the ``ipm`` attack (Xie et al. use 0.1 against Krum and 100 against the median)."""


def alie_update(honest: np.ndarray, num_malicious: int) -> np.ndarray:
    """ALIE's update ``μ − z σ`` from ``honest`` updates stacked on axis 0.

    ``z = Φ⁻¹((n − s)/n)``, ``s = ⌊n/2 + 1⌋ − m`` (Baruch et al. 2019, Algorithm 1), with
    ``n`` all clients of the round and ``m`` the attackers; ``σ`` is the population standard
    deviation.
    """
    total = honest.shape[0]
    supporters = math.floor(total / 2 + 1) - num_malicious
    z = float(norm.ppf((total - supporters) / total))
    return honest.mean(axis=0) - z * honest.std(axis=0)


def ipm_update(honest: np.ndarray, reference: np.ndarray, epsilon: float) -> np.ndarray:
    """IPM's update ``w_g − ε mean(w_i − w_g)`` from ``honest`` weights stacked on axis 0."""
    return reference - epsilon * (honest.mean(axis=0) - reference)


class CollusionSimulation(StrategyWrapper):
    """Simulation-only: replace the tagged attackers' replies by ALIE or IPM updates.

    Args:
        strategy: the strategy (with its defences) that then sees the replies.
        attack: ``alie`` or ``ipm``.
    """

    def __init__(self, strategy: Strategy, attack: str) -> None:
        if attack not in COLLUDING_ATTACKS:
            raise ValueError(f"attack must be one of {COLLUDING_ATTACKS}, got {attack!r}")
        super().__init__(strategy)
        self.attack = attack
        self._reference: dict[str, np.ndarray] = {}


    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays, then configure through the wrapped strategy."""
        self._reference = {k: a.numpy() for k, a in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Craft the attackers' updates from every reply's honest one, then aggregate."""
        replies = list(replies)
        usable = [r for r in replies if not r.has_error()
                  and records.ARRAYS in r.content.array_records]
        tagged = [r for r in usable
                  if r.content.metric_records[records.METRICS].get(records.ATTACKER_TAG) == 1]
        if tagged:
            crafted = self._craft(usable, len(tagged))
            for reply in tagged:
                reply.content[records.ARRAYS] = ArrayRecord(
                    {k: Array(v.copy()) for k, v in crafted.items()})
        for reply in tagged:
            del reply.content.metric_records[records.METRICS][records.ATTACKER_TAG]
        return self.strategy.aggregate_train(server_round, replies)

    def _craft(self, replies: list[Message], num_malicious: int) -> dict[str, np.ndarray]:
        crafted: dict[str, np.ndarray] = {}
        for name, reference in self._reference.items():
            stacked = np.stack([r.content[records.ARRAYS][name].numpy() for r in replies])
            if not np.issubdtype(reference.dtype, np.floating):
                crafted[name] = reference
            elif self.attack == "alie":
                crafted[name] = alie_update(stacked, num_malicious).astype(reference.dtype)
            else:
                crafted[name] = ipm_update(stacked, reference, IPM_EPSILON).astype(reference.dtype)
        return crafted
