"""The edge tier in simulation: a wrapper that puts edge aggregators in front of any strategy.

:class:`HierarchicalStrategy` wraps a cloud ``flwr.serverapp.strategy.Strategy``. The devices'
training replies (compressed deltas tagged with their ``edge-id``) are grouped by edge; each
edge's :class:`~fedmosaic.server.edge.aggregation.EdgeAggregator` validates, averages and
re-compresses them; the wrapper then builds the message that edge would send to the cloud,
counts its serialized bytes, decodes it, and hands the cloud strategy one reply per edge whose
``arrays`` are ``w_global + Δ_edge`` and whose ``num-examples`` is the edge's total, so any
Flower strategy aggregates edges exactly as it would aggregate devices. Evaluation passes
through unchanged.

Asynchronous rounds (``mode = async``, ``server/async_rounds.py``): the loop gives the tier
the global model of each version (:meth:`HierarchicalStrategy.remember_global`) and FedBuff's
staleness weight of each stale device reply (:attr:`HierarchicalStrategy.staleness_weights`);
an edge applies a device's delta, trained on an older version, to the current one, times that
weight, so the cloud gets ``w_v + Σ_i n_i g(s_i) Δ_i / Σ_i n_i`` over a buffer, as in a flat
asynchronous run.

Bytes per hop (from serialized messages, :func:`fedmosaic.server.message_size.message_bytes`):
``device→edge`` sums the devices' training replies, ``edge→cloud`` the edges' aggregate
messages.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.compression import (
    arrays_of,
    arrays_record,
    decode,
    payload_from_record,
)
from fedmosaic.config import RunConfig
from fedmosaic.server.edge.aggregation import (
    Arrays,
    EdgeAggregator,
    rejection_reason,
    staleness_scaled,
)
from fedmosaic.server.edge.configured import device_contract, edge_aggregator
from fedmosaic.server.edge.messages import (
    edge_aggregate_content,
    receive_device_replies,
)
from fedmosaic.server.edge.secure_relay import RelayPlan, relay_masked_sums
from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.validation import MetricRule, RejectedUpdate, Rejections, ReplyContract
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")


@dataclass
class HopTraffic:
    """One round's training traffic through the edge tier."""

    bytes_device_to_edge: int = 0
    bytes_edge_to_cloud: int = 0
    accepted_updates: int = 0
    rejected_updates: int = 0


class HierarchicalStrategy(StrategyWrapper):
    """Edge aggregators between the devices and ``strategy`` (the cloud).

    Args:
        strategy: the cloud strategy; it sees one reply per edge.
        edges: one aggregator per edge, ``edges[e].edge_id == e`` (device replies must report
            ``edge-id`` in ``[0, len(edges))``).
        contract: what every device reply must carry
            (:func:`~fedmosaic.server.edge.configured.device_contract`).
        deployed: the replies come from edge machines (``edge-role=cloud``), each already an
            edge aggregate; otherwise from devices, which this wrapper's edges aggregate.
        secure: under ``secure-aggregation`` the edges relay their devices' masked sums
            (``server/edge/secure_relay.py``) instead of averaging and compressing.
    """

    def __init__(self, strategy: Strategy, edges: Sequence[EdgeAggregator],
                 contract: ReplyContract, deployed: bool = False, secure: bool = False) -> None:
        if not edges:
            raise ValueError("an edge tier needs at least one edge, got none")
        if [edge.edge_id for edge in edges] != list(range(len(edges))):
            raise ValueError(f"edges must be ordered by edge ID 0..{len(edges) - 1}, got IDs "
                             f"{[edge.edge_id for edge in edges]}")
        super().__init__(strategy)
        self.edges = list(edges)
        self.contract = contract
        self.deployed = deployed
        self.secure = secure
        self._plans: dict[int, RelayPlan | None] = {}
        self.intake = Rejections()
        self.declared: dict[int, int] = {}
        self.hops: dict[int, HopTraffic] = defaultdict(HopTraffic)
        self.staleness_weights: dict[int, float] = {}
        """``id(reply)`` → FedBuff weight of a stale reply (a device's, or a deployed edge's)
        of the buffer being aggregated (``mode = async``; set by the loop, cleared by each
        aggregation)."""
        self._global: dict[int, Arrays] = {}

    @classmethod
    def from_config(cls, strategy: Strategy, config: RunConfig) -> HierarchicalStrategy:
        """``strategy`` behind the config's ``num-edges`` edges (``configured.edge_aggregator``)."""
        return cls(strategy, [edge_aggregator(config, e) for e in range(config.num_edges)],
                   device_contract(config), deployed=config.edge_role == "cloud",
                   # deployed edges run secure aggregation among their own devices
                   secure=config.secure_aggregation and config.edge_role == "simulated")

    def round_traffic(self, server_round: int) -> dict[str, int]:
        """A round's edge-tier traffic, as :class:`~fedmosaic.server.recorder.RoundRecord` fields.

        Returns:
            ``bytes_device_to_edge``, ``bytes_edge_to_cloud``, ``edge_rejected_updates`` and
            ``edge_rejected_reasons`` (in simulation; a deployed edge logs its reasons).
        """
        hops = self.hops[server_round]
        reasons = Counter(self.intake.reasons(server_round))
        for edge in self.edges:
            reasons.update(edge.rejections.reasons(server_round))
        return {"bytes_device_to_edge": hops.bytes_device_to_edge,
                "bytes_edge_to_cloud": hops.bytes_edge_to_cloud,
                "edge_rejected_updates": hops.rejected_updates,
                "edge_rejected_reasons": dict(sorted(reasons.items()))}

    def summary(self) -> None:
        """Log the edge tier and the cloud strategy's summary."""
        log.info("edge tier: %d edges, edge→cloud %s", len(self.edges), self.edges[0].spec)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember the global weights of this round; configure through the cloud strategy.

        Under secure aggregation the edges also remember what the messages told each device
        (its index in the cohort, the word type) to check their masked replies against.
        """
        if server_round not in self._global:  # asynchronous rounds configure one device a time
            self.remember_global(server_round, arrays)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.secure:
            self._plans[server_round] = RelayPlan.of(messages)
        return messages

    def remember_global(self, server_round: int, arrays: ArrayRecord) -> None:
        """Take ``arrays`` as the global model the deltas of ``server_round`` apply to.

        Earlier rounds' models are forgotten.
        """
        self._global = {server_round: arrays_of(arrays)}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate every edge; the cloud strategy then aggregates one reply per edge.

        Replies from devices go through this wrapper's edge aggregators (simulation); replies
        that already are edge aggregates (deployment, ``edge-role=cloud``) are taken as sent.
        """
        reference = self._global.pop(server_round)
        traffic = self.hops[server_round]
        replies = [r for r in replies if not r.has_error()]
        scales, self.staleness_weights = self.staleness_weights, {}
        if self.secure:
            return self._relay_masked(server_round, replies, reference)
        sent = [(reply, scales.get(id(reply), 1.0)) for reply in replies] if self.deployed else []
        received = receive_device_replies([] if self.deployed else replies, self.contract,
                                          server_round, self.declared, scales)
        for reason, count in received.rejected.items():
            self.intake.add(server_round, reason, count)
        traffic.rejected_updates += sum(received.rejected.values())
        for edge_id in sorted(received.by_edge):
            updates = received.by_edge[edge_id]
            aggregate = self.edges[edge_id].aggregate(updates, reference, server_round)
            if aggregate is None:
                traffic.rejected_updates += len(updates)
                traffic.bytes_device_to_edge += received.bytes_by_edge[edge_id]
                continue
            # what the edge sends up: a reply to the cloud's train instruction
            content = edge_aggregate_content(aggregate, received.bytes_by_edge[edge_id])
            sent.append((Message(content, metadata=copy.copy(received.metadata[edge_id])), 1.0))
        cloud_replies = []
        for reply, scale in sent:
            traffic.bytes_edge_to_cloud += message_bytes(reply)
            try:
                counters = edge_counters(reply)
                cloud_replies.append(as_weights(reply, reference, scale))
            except Exception as error:  # noqa: BLE001 - an edge's bytes must not end the round
                log.warning("round %d: rejected an edge aggregate: %s", server_round, error)
                self.intake.add(server_round, rejection_reason(error))
                traffic.rejected_updates += 1
                continue
            traffic.bytes_device_to_edge += counters[records.EDGE_BYTES_IN]
            traffic.accepted_updates += counters[records.EDGE_ACCEPTED]
            traffic.rejected_updates += counters[records.EDGE_REJECTED]
        return self.strategy.aggregate_train(server_round, cloud_replies)

    def _relay_masked(self, server_round: int, replies: list[Message], reference: Arrays
                      ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Secure aggregation: every edge sends its devices' masked sum up, as an edge would."""
        traffic = self.hops[server_round]
        size = sum(array.size for array in reference.values()) + 1
        plan = self._plans.pop(server_round, None)
        if plan is None:  # no training message went out: nothing can be relayed
            return self.strategy.aggregate_train(server_round, [])
        relayed, bytes_by_edge, rejected = relay_masked_sums(replies, self.contract, size, plan,
                                                             server_round)
        if rejected:
            self.intake.add(server_round, "malformed", rejected)
        traffic.rejected_updates += rejected
        traffic.bytes_device_to_edge += sum(bytes_by_edge.values())
        for reply in relayed:
            traffic.bytes_edge_to_cloud += message_bytes(reply)
            traffic.accepted_updates += len(
                reply.content.config_records[records.SECURE_AGGREGATION]["members"])  # type: ignore[arg-type]
        return self.strategy.aggregate_train(server_round, relayed)


def edge_counters(sent: Message) -> dict[str, int]:
    """The edge-tier counters of an edge's reply (:data:`~fedmosaic.records.EDGE_TIER_METRICS`).

    Raises:
        RejectedUpdate: if a counter is missing or not a non-negative integer.
    """
    metrics = sent.content.metric_records.get(records.METRICS, {})
    rule = MetricRule(0, 2**53, integer=True)
    for key in records.EDGE_TIER_METRICS:
        if key not in metrics:
            raise RejectedUpdate("metrics", f"an edge aggregate needs the metric {key!r}")
        rule.check(key, metrics[key])
    return {key: int(metrics[key]) for key in records.EDGE_TIER_METRICS}  # type: ignore[arg-type]


def as_weights(sent: Message, reference: Arrays, scale: float = 1.0) -> Message:
    """What the cloud strategy gets from an edge's reply: weights ``w_global + scale Δ_edge``.

    ``scale`` is FedBuff's staleness weight of a deployed edge's asynchronous reply (1 else).

    The edge-tier counters are removed from the metrics; ``num-examples`` stays the weight.

    Raises:
        ValueError: (``WireFormatError`` included) if the payload does not decode to a delta
            of the global arrays.
    """
    delta = staleness_scaled(decode(payload_from_record(sent.content[records.COMPRESSED_DELTA]),
                                    expected=reference), scale)
    weights = {name: reference[name] + delta[name] for name in reference}
    metrics = MetricRecord({k: v for k, v in sent.content[records.METRICS].items()
                            if k not in records.EDGE_TIER_METRICS})
    content = RecordDict({records.ARRAYS: arrays_record(weights), records.METRICS: metrics})
    return Message(content, metadata=copy.copy(sent.metadata))
