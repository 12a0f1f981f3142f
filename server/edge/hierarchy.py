"""The edge tier in simulation: a wrapper that puts edge aggregators in front of any strategy.

:class:`HierarchicalStrategy` wraps a cloud ``flwr.serverapp.strategy.Strategy``. The devices'
training replies (compressed deltas tagged with their ``edge-id``) are grouped by edge; each
edge's :class:`~fedmosaic.server.edge.aggregation.EdgeAggregator` validates, averages and
re-compresses them; the wrapper then builds the message that edge would send to the cloud,
counts its serialized bytes, decodes it, and hands the cloud strategy one reply per edge whose
``arrays`` are ``w_global + Δ_edge`` and whose ``num-examples`` is the edge's total, so any
Flower strategy aggregates edges exactly as it would aggregate devices. Evaluation passes
through unchanged.

Bytes per hop (from serialized messages, :func:`fedmosaic.server.traffic.message_bytes`):
``device→edge`` sums the devices' training replies, ``edge→cloud`` the edges' aggregate
messages.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
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
from fedmosaic.server.edge.aggregation import Arrays, EdgeAggregator
from fedmosaic.server.edge.configured import edge_aggregator
from fedmosaic.server.edge.messages import (
    EDGE_ACCEPTED,
    EDGE_BYTES_IN,
    EDGE_REJECTED,
    EDGE_TIER_METRICS,
    edge_aggregate_content,
    is_edge_aggregate,
    receive_device_replies,
)
from fedmosaic.server.traffic import message_bytes
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
    """

    def __init__(self, strategy: Strategy, edges: Sequence[EdgeAggregator]) -> None:
        if not edges:
            raise ValueError("an edge tier needs at least one edge, got none")
        if [edge.edge_id for edge in edges] != list(range(len(edges))):
            raise ValueError(f"edges must be ordered by edge ID 0..{len(edges) - 1}, got IDs "
                             f"{[edge.edge_id for edge in edges]}")
        super().__init__(strategy)
        self.edges = list(edges)
        self.hops: dict[int, HopTraffic] = defaultdict(HopTraffic)
        self._global: dict[int, Arrays] = {}

    @classmethod
    def from_config(cls, strategy: Strategy, config: RunConfig) -> HierarchicalStrategy:
        """``strategy`` behind the config's ``num-edges`` edges (``configured.edge_aggregator``)."""
        return cls(strategy, [edge_aggregator(config, e) for e in range(config.num_edges)])

    def round_traffic(self, server_round: int) -> dict[str, int]:
        """A round's edge-tier traffic, as :class:`~fedmosaic.server.recorder.RoundRecord` fields.

        Returns:
            ``bytes_device_to_edge``, ``bytes_edge_to_cloud`` and ``edge_rejected_updates``.
        """
        hops = self.hops[server_round]
        return {"bytes_device_to_edge": hops.bytes_device_to_edge,
                "bytes_edge_to_cloud": hops.bytes_edge_to_cloud,
                "edge_rejected_updates": hops.rejected_updates}

    def summary(self) -> None:
        """Log the edge tier and the cloud strategy's summary."""
        log.info("edge tier: %d edges, edge→cloud %s", len(self.edges), self.edges[0].spec)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember the global weights of this round; configure through the cloud strategy."""
        self._global = {server_round: arrays_of(arrays)}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate every edge; the cloud strategy then aggregates one reply per edge.

        Replies from devices go through this wrapper's edge aggregators (simulation); replies
        that already are edge aggregates (deployment, ``edge-role=cloud``) are taken as sent.
        """
        reference = self._global.pop(server_round)
        traffic = self.hops[server_round]
        replies = [r for r in replies if not r.has_error()]
        sent = [r for r in replies if is_edge_aggregate(r)]
        received = receive_device_replies([r for r in replies if not is_edge_aggregate(r)],
                                          len(self.edges), server_round)
        traffic.rejected_updates += received.rejected
        for edge_id in sorted(received.by_edge):
            updates = received.by_edge[edge_id]
            aggregate = self.edges[edge_id].aggregate(updates, reference, server_round)
            if aggregate is None:
                traffic.rejected_updates += len(updates)
                traffic.bytes_device_to_edge += received.bytes_by_edge[edge_id]
                continue
            # what the edge sends up: a reply to the cloud's train instruction
            content = edge_aggregate_content(aggregate, received.bytes_by_edge[edge_id])
            sent.append(Message(content, metadata=copy.copy(received.metadata[edge_id])))
        cloud_replies = []
        for reply in sent:
            metrics = reply.content[records.METRICS]
            counters = {k: int(metrics.get(k, 0)) for k in EDGE_TIER_METRICS}  # type: ignore[arg-type]
            traffic.bytes_edge_to_cloud += message_bytes(reply)
            traffic.bytes_device_to_edge += counters[EDGE_BYTES_IN]
            traffic.accepted_updates += counters[EDGE_ACCEPTED]
            traffic.rejected_updates += counters[EDGE_REJECTED]
            try:
                cloud_replies.append(as_weights(reply, reference))
            except ValueError as error:
                log.warning("round %d: rejected an edge aggregate: %s", server_round, error)
        return self.strategy.aggregate_train(server_round, cloud_replies)


def as_weights(sent: Message, reference: Arrays) -> Message:
    """What the cloud strategy gets from an edge's reply: weights ``w_global + Δ_edge``.

    The edge-tier counters are removed from the metrics; ``num-examples`` stays the weight.

    Raises:
        ValueError: (``WireFormatError`` included) if the payload does not decode to a delta
            of the global arrays.
    """
    delta = decode(payload_from_record(sent.content[records.COMPRESSED_DELTA]))
    if list(delta) != list(reference) or any(delta[k].shape != v.shape
                                             for k, v in reference.items()):
        raise ValueError(f"edge aggregate holds arrays {list(delta)}, expected the global "
                         f"arrays {list(reference)} with their shapes")
    weights = {name: reference[name] + delta[name] for name in reference}
    metrics = MetricRecord({k: v for k, v in sent.content[records.METRICS].items()
                            if k not in EDGE_TIER_METRICS})
    content = RecordDict({records.ARRAYS: arrays_record(weights), records.METRICS: metrics})
    return Message(content, metadata=copy.copy(sent.metadata))
