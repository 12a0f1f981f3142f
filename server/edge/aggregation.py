"""What an edge aggregator does with its devices' updates, in simulation and in deployment.

Hierarchical FedAvg (Liu et al. 2020, "Client-Edge-Cloud Hierarchical Federated Learning",
arXiv:1905.06641) with compressed hops. Devices ``i = 1..m`` of an edge send compressed deltas
``Δ_i = w_i − w_global`` with example counts ``n_i``. The edge decodes and validates each one
(a payload that does not decode or an update that fails validation is rejected, logged and
counted; the others go on), forms the weighted partial average

    Δ_edge = Σ_i n_i Δ_i / N_edge,    N_edge = Σ_i n_i,

and sends one payload ``C(Δ_edge + r)`` to the cloud with weight ``N_edge``, keeping the error
feedback residual ``r ← Δ_edge + r − D(C(Δ_edge + r))`` across rounds (Stich et al. 2018,
"Sparsified SGD with Memory", arXiv:1809.07599). With lossless hops, the cloud's FedAvg over
edges gives ``w_global + Σ_e N_e Δ_e / Σ_e N_e = Σ_i n_i w_i / Σ_i n_i``: flat FedAvg.

:class:`EdgeAggregator` is the same object in the simulation (one per edge, inside
:class:`~fedmosaic.server.edge.hierarchy.HierarchicalStrategy`) and on an edge machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedmosaic.compression import CompressionSpec, WireFormatError, compress, decode
from fedmosaic.server.validation import RejectedUpdate, Rejections
from fedmosaic.strategies import kernels

log = logging.getLogger("fedmosaic")

Arrays = dict[str, np.ndarray]
UpdateValidator = Callable[[Arrays, Arrays, int], None]
"""``validate(update, reference, num_examples)`` raises ``ValueError`` if ``update`` (full
weights ``w_global + Δ``) is not an acceptable update of ``reference`` (``w_global``)."""


@dataclass(frozen=True)
class DeviceUpdate:
    """One device's reply as an edge receives it.

    Attributes:
        device: a label for logs (node ID or partition).
        payload: the codec's payload of ``w_device − w_global``.
        num_examples: training examples the update is based on (its weight).
        metrics: the device's other scalar metrics (``train-loss``, ...).
        scale: what the decoded delta is multiplied by before it is averaged: FedBuff's
            staleness weight ``g(s)`` of an asynchronous reply ``s`` versions old
            (``server/async_rounds.py``); 1 in synchronous rounds.
    """

    device: str
    payload: bytes
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0


@dataclass(frozen=True)
class EdgeAggregate:
    """What an edge sends to the cloud for one round.

    Attributes:
        edge_id: the edge.
        payload: the codec's payload of the edge's weighted average delta (plus residual).
        num_examples: ``N_edge``, the accepted devices' examples (the cloud's weight).
        metrics: examples-weighted means of the accepted devices' metrics.
        accepted: devices averaged.
        rejected: devices whose payload did not decode or whose update failed validation.
    """

    edge_id: int
    payload: bytes
    num_examples: int
    metrics: dict[str, float]
    accepted: int
    rejected: int


def weighted_average(deltas: Sequence[Arrays], weights: Sequence[int]) -> Arrays:
    """``Σ_i w_i Δ_i / Σ_i w_i`` per array, accumulated in float64, cast to each array's dtype.

    Streamed into one accumulator (:func:`~fedmosaic.strategies.kernels.weighted_average`).

    Raises:
        ValueError: if there are no deltas, lengths differ, a weight is not positive, or the
            deltas do not share names and shapes.
    """
    if not deltas:
        raise ValueError("weighted_average needs at least one delta, got none")
    if len(deltas) != len(weights):
        raise ValueError(f"expected one weight per delta, got {len(weights)} weights for "
                         f"{len(deltas)} deltas")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {list(weights)}")
    return kernels.weighted_average(deltas, weights, dtype=np.float64)


def staleness_scaled(delta: Arrays, scale: float) -> Arrays:
    """``delta`` times FedBuff's staleness weight ``scale``, each array in its own dtype.

    Floating arrays are multiplied; any other array (a counter such as BatchNorm's
    ``num_batches_tracked``) of a stale update (``scale != 1``) becomes 0, so it follows the
    current model, as in flat asynchronous rounds (``server/async_rounds.py``'s
    ``rewritten``). ``scale == 1`` returns ``delta`` itself.
    """
    if scale == 1.0:
        return delta
    return {name: (value * scale).astype(value.dtype, copy=False)
            if np.issubdtype(value.dtype, np.floating) else np.zeros_like(value)
            for name, value in delta.items()}


def rejection_reason(error: BaseException) -> str:
    """The reason a rejected update is counted under.

    The validator's own reason, ``payload`` for a payload that does not decode or fit the
    model, else ``malformed``.
    """
    if isinstance(error, RejectedUpdate):
        return error.reason
    if isinstance(error, WireFormatError):
        return "payload"
    return "malformed"


def weighted_metrics(updates: Sequence[DeviceUpdate]) -> dict[str, float]:
    """Examples-weighted mean of every metric all ``updates`` report."""
    if not updates:
        return {}
    shared = set(updates[0].metrics).intersection(*(u.metrics for u in updates[1:]))
    total = sum(u.num_examples for u in updates)
    return {key: sum(u.metrics[key] * u.num_examples for u in updates) / total
            for key in sorted(shared)}


class EdgeAggregator:
    """One edge: validate, decode, partially average, re-compress with its own residual.

    Args:
        edge_id: this edge's ID.
        spec: compression of the edge→cloud hop.
        validate: checks one decoded update against the global weights (raises ValueError).
        seed: seeds the stochastic rounding (``[seed, edge_id, round]`` per round).
        combine: ``combine(deltas, num_examples)`` of the accepted devices; the weighted
            average (default), or a robust rule from :mod:`fedmosaic.server.edge.robust`.
    """

    def __init__(self, edge_id: int, spec: CompressionSpec, validate: UpdateValidator,
                 seed: int = 0,
                 combine: Callable[[Sequence[Arrays], Sequence[int]], Arrays] | None = None
                 ) -> None:
        self.edge_id = edge_id
        self.spec = spec
        self.validate = validate
        self.seed = seed
        self.combine = combine or weighted_average
        self.residual: Arrays | None = None
        self.rejections = Rejections()

    def decode_valid(self, update: DeviceUpdate, reference: Arrays) -> Arrays:
        """The delta ``update`` carries, times its ``scale``, if the update is valid.

        Valid: the payload decodes, and the scaled delta on ``reference`` (what the cloud
        would aggregate) passes the validator.

        Raises:
            ValueError: (``WireFormatError`` included) saying why the update is rejected.
        """
        if update.num_examples <= 0:
            raise ValueError(f"num-examples must be > 0, got {update.num_examples}")
        # the layout is checked before anything is allocated
        delta = staleness_scaled(decode(update.payload, expected=reference), update.scale)
        self.validate({k: reference[k] + delta[k] for k in reference}, reference,
                      update.num_examples)
        return delta

    def aggregate(self, updates: Sequence[DeviceUpdate], reference: Arrays,
                  server_round: int) -> EdgeAggregate | None:
        """Aggregate one round of device updates; ``None`` if none was accepted.

        Args:
            updates: the devices' replies.
            reference: the global weights the deltas apply to (``w_global``: the one the
                devices trained from; in asynchronous rounds, the current version).
            server_round: the cloud's round (seeds the stochastic rounding).
        """
        accepted: list[DeviceUpdate] = []
        deltas: list[Arrays] = []
        for update in updates:
            try:
                delta = self.decode_valid(update, reference)
            except Exception as error:  # noqa: BLE001 - a device's bytes must not end the round
                self.rejections.add(server_round, rejection_reason(error))
                log.warning("edge %d: rejected the update of device %s in round %d: %s: %s",
                            self.edge_id, update.device, server_round,
                            rejection_reason(error), error)
                continue
            deltas.append(delta)
            accepted.append(update)
        rejected = len(updates) - len(accepted)
        if not accepted:
            log.warning("edge %d: no acceptable update in round %d (%d rejected)",
                        self.edge_id, server_round, rejected)
            return None
        average = self.combine(deltas, [u.num_examples for u in accepted])
        rng = np.random.default_rng([self.seed, self.edge_id, server_round])
        payload, self.residual = compress(average, self.spec, self.residual, rng)
        return EdgeAggregate(
            edge_id=self.edge_id,
            payload=payload,
            num_examples=sum(u.num_examples for u in accepted),
            metrics=weighted_metrics(accepted),
            accepted=len(accepted),
            rejected=rejected,
        )
