r"""Risk perception as a stage of the server chain: each device's risk score, every round.

The stage sees a training round from the outside of validation and aggregation and builds,
per replying device, what the server itself observed (``privacy/risk/``):

* round trip: the reply's creation time minus the instruction's (Flower stamps both);
* reply bytes: the serialized reply (:func:`~fedmosaic.server.message_size.message_bytes`);
* update norm and cosine to the aggregate: :math:`\lVert w_i - w_g \rVert` and
  :math:`\cos(w_i - w_g, \bar w - w_g)` with :math:`\bar w` what the inner stages aggregated
  (0 for a reply whose arrays do not match the global model);
* rejections: this device's replies that validation or the ledger rejected so far;
* the modalities it declares (``modalities-held``) and the load it reports (``cpu-load``,
  ``memory-load``).

Nothing here reads a device's samples: a device's risk is a function of its messages only
(``tests/server/test_risk_stage.py`` scores rounds with every dataset's sample access made to
fail). Scores land in ``history.jsonl`` (``risk`` per node), in
TensorBoard (``risk/mean``, ``risk/max``) and in ``summary.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.arrays import record_arrays
from fedmosaic.data.modality import ModalitySpec
from fedmosaic.privacy.risk.channel import CHANNEL_FIELDS, ChannelObservation
from fedmosaic.privacy.risk.perception import DeviceObservation, RiskPerception, RiskScore
from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.validation import Rejections
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")


class RiskStage(StrategyWrapper):
    """Score every replying device each round (module docstring).

    Args:
        strategy: The next stage.
        specs: The dataset's modalities (names for ``modalities-held``).
        perception: The risk model (channel autoencoder, sensitivity table, AHP weights).
        rejections: The tiers whose rejections count against a device.
    """

    def __init__(self, strategy: Strategy, specs: tuple[ModalitySpec, ...],
                 perception: RiskPerception, rejections: Iterable[Rejections] = ()) -> None:
        super().__init__(strategy)
        self.specs = specs
        self.perception = perception
        self.rejections = list(rejections)
        self.scores: dict[int, dict[int, RiskScore]] = {}
        self.observations: dict[int, dict[int, DeviceObservation]] = {}
        self._sent: dict[int, Message] = {}
        self._global: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Configure through ``strategy``; remember the global weights."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent = {m.metadata.dst_node_id: m for m in messages}
        self._global = {k: a.numpy() for k, a in arrays.items()}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate through ``strategy``, then score each replying device."""
        replies = list(replies)
        observed = {r.metadata.src_node_id: (r, message_bytes(r), flat_update(r, self._global))
                    for r in replies if not r.has_error()}
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies)
        direction = None
        if aggregated is not None:
            direction = _delta({k: a.numpy() for k, a in aggregated.items()}, self._global)
        observations = {}
        for node, (reply, size, delta) in observed.items():
            observation = self._observe(reply, size, delta, direction)
            if observation is not None:
                observations[node] = observation
        self.observations[server_round] = observations
        self.scores[server_round] = self.perception.assess(server_round, observations)
        return aggregated, metrics

    def round_scores(self, server_round: int) -> dict[str, dict[str, float]]:
        """``{node id: {risk, risk-channel, ..., round-trip-seconds, ...}}`` of a round.

        The score, its criteria and the channel observation it came from (JSON keys).
        """
        observed = self.observations.get(server_round, {})
        return {str(node): {**score.to_metrics(), **{
                    name.replace("_", "-"): value for name, value in zip(
                        CHANNEL_FIELDS, observed[node].channel.as_tuple(), strict=True)}}
                for node, score in sorted(self.scores.get(server_round, {}).items())}

    def _observe(self, reply: Message, size: int, delta: np.ndarray | None,
                 direction: np.ndarray | None) -> DeviceObservation | None:
        """What the server saw of one reply, or ``None`` if its metadata is unusable."""
        metrics = reply.content.metric_records.get(records.METRICS, {})
        held = metrics.get(records.MODALITIES_HELD)
        names = ([s.name for s, h in zip(self.specs, held, strict=True) if h]
                 if isinstance(held, list) and len(held) == len(self.specs) else [])
        norm = float(np.linalg.norm(delta)) if delta is not None else 0.0
        cosine = 0.0
        if delta is not None and direction is not None:
            scale = norm * float(np.linalg.norm(direction))
            cosine = float(np.dot(delta, direction) / scale) if scale > 0 else 0.0
        node = reply.metadata.src_node_id
        rejected = sum(tier.by_node[node] for tier in self.rejections)
        try:
            return DeviceObservation(
                channel=ChannelObservation(
                    round_trip_seconds=max(0.0, reply.metadata.created_at - self._sent_at(reply)),
                    reply_bytes=float(size), update_norm=norm if math.isfinite(norm) else 0.0,
                    cosine_to_aggregate=max(-1.0, min(1.0, cosine)) if math.isfinite(cosine)
                    else 0.0, rejections=float(rejected)),
                modalities=tuple(names) or tuple(s.name for s in self.specs),
                cpu_fraction=_fraction(metrics.get(records.CPU_LOAD)),
                memory_fraction=_fraction(metrics.get(records.MEMORY_LOAD)))
        except (TypeError, ValueError) as error:
            log.warning("risk: node %d not scored: %s", node, error)
            return None

    def _sent_at(self, reply: Message) -> float:
        """When the instruction this reply answers was created (its own time if unknown)."""
        sent = self._sent.get(reply.metadata.src_node_id)
        return sent.metadata.created_at if sent is not None else reply.metadata.created_at


def flat_update(reply: Message, reference: dict[str, np.ndarray]) -> np.ndarray | None:
    """The reply's flattened update ``w_i - w_g``, or ``None`` if it does not fit ``reference``."""
    arrays = reply.content.array_records.get(records.ARRAYS)
    if arrays is None or list(arrays) != list(reference):
        return None
    try:
        update = record_arrays(arrays)
    except Exception:  # noqa: BLE001 - a payload that does not decode has no update
        return None
    if any(update[k].shape != g.shape for k, g in reference.items()):
        return None
    return _delta(update, reference)


def _delta(update: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray:
    """``update - reference`` over the floating-point arrays, flattened, in float64."""
    parts = [update[k].astype(np.float64).ravel() - ref.astype(np.float64).ravel()
             for k, ref in reference.items() if np.issubdtype(ref.dtype, np.inexact)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _fraction(value: object) -> float:
    """A reported load in [0, 1]; a missing or malformed one is unknown: 0.5.

    A DP refusal reports no load.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.5
    return min(1.0, max(0.0, float(value)))
