"""Simulated malicious clients: data poisoning, model poisoning and garbage payloads.

With ``-c attack=NAME -c malicious-fraction=f``, ``round(f * num-clients)`` partitions are
malicious, chosen by a permutation seeded with ``seed`` alone (:func:`malicious_partitions`),
so the same clients misbehave in every round and every process. Every malicious client first
trains honestly from the global weights ``w_g`` (on flipped labels for ``label-flip``) to
``w``, with ``Δ = w − w_g``; then, per behaviour:

==============  ============================================================================
``label-flip``  data poisoning: every local label ``y`` becomes ``C − 1 − y`` (Tolpegin et
                al. 2020, arXiv:2007.08432); the update is the honest training on them.
``sign-flip``   sends ``w_g − Δ``.
``gaussian``    sends ``w_g + ε``, ``ε ~ N(0, σ² I)``, σ = :data:`GAUSSIAN_STD`, drawn from
                ``(seed, partition, round)``.
``scale-10``    sends ``w_g + 10 Δ`` (``scale-100``: ``100 Δ``), the boosting of Bagdasaryan
                et al. 2020 (arXiv:1807.00459).
``nan``         sends NaN in every floating-point array (a garbage payload).
``alie``        "A Little Is Enough" (Baruch et al. 2019, arXiv:1902.06156): every malicious
                client sends ``μ − z σ``, with ``μ, σ`` the coordinate-wise mean and standard
                deviation of the ``n`` honest updates of the round and
                ``z = Φ⁻¹((n − s) / n)``, ``s = ⌊n/2 + 1⌋ − m`` for ``m`` attackers.
``ipm``         inner product manipulation (Xie et al. 2020, arXiv:1903.03936): every
                malicious client sends ``w_g − ε μ_Δ``, ``μ_Δ`` the mean honest update,
                ε = :data:`IPM_EPSILON`.
==============  ============================================================================

Threat model. The first five behaviours are local: the malicious device alters its own data
or reply (:class:`ClientAttack`, called from the ClientApp). ALIE and IPM assume an omniscient,
colluding attacker that sees the round's honest updates; no device can, so a simulation-only
wrapper, :class:`CollusionSimulation`, plays that attacker on the server side: the malicious
devices train honestly and tag their reply with :data:`ATTACKER_TAG`; after collection the
wrapper replaces every tagged reply's arrays with the crafted update (and removes the tag)
before the defences and the strategy see it. It is installed only when ``attack`` is ``alie``
or ``ipm``; it is a test harness, never part of a real deployment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from scipy.stats import norm

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.simulation.modality import MultimodalArrays
from fedmosaic.strategies.wrapper import StrategyWrapper

GAUSSIAN_STD = 1.0
"""σ of the ``gaussian`` attack's replacement update (per coordinate)."""
IPM_EPSILON = 10.0
"""ε of the ``ipm`` attack (Xie et al. use 0.1 against Krum and 100 against the median)."""
COLLUDING_ATTACKS = ("alie", "ipm")
"""Attacks that need the round's honest updates, played by :class:`CollusionSimulation`."""
ATTACKER_TAG = "simulated-attacker"
"""Metric a colluding attacker's reply carries until :class:`CollusionSimulation` replaces it."""


def malicious_partitions(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The ``round(fraction * num_clients)`` malicious partitions, fixed by ``seed``.

    Raises:
        ValueError: if ``num_clients < 1`` or ``fraction`` is outside ``[0, 1)``.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    count = round(fraction * num_clients)
    order = np.random.default_rng([seed, 0xA77AC]).permutation(num_clients)
    return frozenset(int(p) for p in order[:count])


def flip_labels(arrays: MultimodalArrays, num_classes: int) -> MultimodalArrays:
    """The same samples with every label ``y`` replaced by ``num_classes − 1 − y``."""
    return MultimodalArrays(inputs=arrays.inputs, mask=arrays.mask,
                            labels=(num_classes - 1 - arrays.labels).astype(arrays.labels.dtype))


@dataclass(frozen=True)
class ClientAttack:
    """What one device does to its data and reply; a no-op for an honest device.

    Attributes:
        attack: a name from ``config.ATTACKS`` (``none`` for an honest device).
        seed: run seed.
        partition_id: the device.
    """

    attack: str
    seed: int
    partition_id: int

    @classmethod
    def for_partition(cls, config: RunConfig, partition_id: int) -> ClientAttack:
        """The behaviour of ``partition_id`` under ``config`` (``none`` unless malicious)."""
        bad = malicious_partitions(config.num_clients, config.malicious_fraction, config.seed)
        attack = config.attack if partition_id in bad else "none"
        return cls(attack=attack, seed=config.seed, partition_id=partition_id)

    def poison_data(self, arrays: MultimodalArrays, num_classes: int) -> MultimodalArrays:
        """Training data as the device uses it (labels flipped for ``label-flip``)."""
        return flip_labels(arrays, num_classes) if self.attack == "label-flip" else arrays

    def poison_model(self, model: torch.nn.Module, global_arrays: ArrayRecord,
                     server_round: int) -> None:
        """Replace the trained weights in ``model`` by what the device sends."""
        if self.attack not in ("sign-flip", "gaussian", "scale-10", "scale-100", "nan"):
            return
        reference = global_arrays.to_torch_state_dict()
        generator = torch.Generator().manual_seed(
            hash((self.seed, self.partition_id, server_round)) & 0x7FFF_FFFF)
        state = model.state_dict()
        for name, weight in state.items():
            if not weight.is_floating_point():
                continue
            delta = weight - reference[name]
            if self.attack == "sign-flip":
                state[name] = reference[name] - delta
            elif self.attack == "gaussian":
                noise = torch.randn(weight.shape, generator=generator) * GAUSSIAN_STD
                state[name] = reference[name] + noise.to(weight.dtype)
            elif self.attack == "nan":
                state[name] = torch.full_like(weight, math.nan)
            else:
                state[name] = reference[name] + float(self.attack.split("-")[1]) * delta
        model.load_state_dict(state)

    def reply_metrics(self) -> dict[str, int]:
        """Extra metrics of the reply: the tag a colluding attacker's reply carries."""
        return {ATTACKER_TAG: 1} if self.attack in COLLUDING_ATTACKS else {}


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
                  if r.content.metric_records[records.METRICS].get(ATTACKER_TAG) == 1]
        if tagged:
            crafted = self._craft(usable, len(tagged))
            for reply in tagged:
                reply.content[records.ARRAYS] = ArrayRecord(
                    {k: Array(v.copy()) for k, v in crafted.items()})
        for reply in tagged:
            del reply.content.metric_records[records.METRICS][ATTACKER_TAG]
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


