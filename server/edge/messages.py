"""Edge-tier records in Flower messages: device replies in, edge aggregates out.

A device's training reply below an edge carries ``compressed-delta`` (the codec's payload in an
ArrayRecord) and ``metrics`` with ``num-examples`` and ``edge-id``; an edge's reply to the
cloud carries its aggregate's payload the same way, with ``num-examples`` = the edge's examples
the examples-weighted means of its devices' metrics, and the edge-tier counters
``edge-accepted``, ``edge-rejected`` and ``edge-bytes-in``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, Metadata, MetricRecord, RecordDict

from fedmosaic import records
from fedmosaic.compression import payload_from_record, payload_to_record
from fedmosaic.server.edge.aggregation import DeviceUpdate, EdgeAggregate
from fedmosaic.server.traffic import message_bytes

EDGE_ACCEPTED = "edge-accepted"
"""Metric of an edge's reply: device updates it averaged."""
EDGE_REJECTED = "edge-rejected"
"""Metric of an edge's reply: device updates it rejected."""
EDGE_BYTES_IN = "edge-bytes-in"
"""Metric of an edge's reply: serialized bytes of its devices' replies this round."""
EDGE_TIER_METRICS = (EDGE_ACCEPTED, EDGE_REJECTED, EDGE_BYTES_IN)

log = logging.getLogger("fedmosaic")


class MalformedReplyError(ValueError):
    """A device reply lacks what the edge tier needs; the reply is rejected."""


def device_update_from_reply(reply: Message) -> tuple[int, DeviceUpdate]:
    """The edge ID a device reports and its update.

    Raises:
        MalformedReplyError: if the reply lacks the payload, ``num-examples`` or ``edge-id``.
        WireFormatError: if the payload record is not a codec payload.
    """
    content = reply.content
    device = str(reply.metadata.src_node_id)
    if records.COMPRESSED_DELTA not in content.array_records:
        raise MalformedReplyError(
            f"device {device}: expected an ArrayRecord {records.COMPRESSED_DELTA!r} in the "
            f"reply, got array records {sorted(content.array_records)}"
        )
    metrics = content.metric_records.get(records.METRICS)
    missing = [k for k in (records.NUM_EXAMPLES, records.EDGE_ID)
               if metrics is None or k not in metrics]
    if missing:
        raise MalformedReplyError(
            f"device {device}: expected metrics {missing} in the reply's "
            f"{records.METRICS!r} record, got {sorted(metrics or {})}"
        )
    scalars = {k: float(v) for k, v in metrics.items()  # type: ignore[arg-type]
               if k not in (records.NUM_EXAMPLES, records.EDGE_ID) and isinstance(v, int | float)}
    update = DeviceUpdate(
        device=device,
        payload=payload_from_record(content[records.COMPRESSED_DELTA]),
        num_examples=int(metrics[records.NUM_EXAMPLES]),  # type: ignore[arg-type, index]
        metrics=scalars,
    )
    return int(metrics[records.EDGE_ID]), update  # type: ignore[arg-type, index]


@dataclass
class ReceivedUpdates:
    """One round of device replies at the edge tier, sorted by edge.

    Attributes:
        by_edge: the well-formed updates of each edge.
        metadata: the metadata of each edge's first reply (what its reply upward mirrors).
        bytes_by_edge: serialized bytes of each edge's device replies.
        rejected: replies rejected because they lacked what the edge tier needs.
    """

    by_edge: dict[int, list[DeviceUpdate]] = field(default_factory=lambda: defaultdict(list))
    metadata: dict[int, Metadata] = field(default_factory=dict)
    bytes_by_edge: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    rejected: int = 0


def receive_device_replies(replies: Iterable[Message], num_edges: int,
                           server_round: int) -> ReceivedUpdates:
    """Parse device replies; log and count the malformed ones (error replies are skipped)."""
    received = ReceivedUpdates()
    for reply in replies:
        if reply.has_error():
            continue
        try:
            edge_id, update = device_update_from_reply(reply)
            if not 0 <= edge_id < num_edges:
                raise MalformedReplyError(f"edge-id must lie in [0, {num_edges}), got {edge_id}")
        except ValueError as error:
            log.warning("round %d: rejected a device reply: %s", server_round, error)
            received.rejected += 1
            continue
        received.by_edge[edge_id].append(update)
        received.metadata.setdefault(edge_id, reply.metadata)
        received.bytes_by_edge[edge_id] += message_bytes(reply)
    return received


def edge_aggregate_content(aggregate: EdgeAggregate, bytes_device_to_edge: int,
                           malformed: int = 0) -> RecordDict:
    """The content of an edge's reply to the cloud.

    ``compressed-delta`` holds the aggregate's payload; ``metrics`` the devices' weighted
    metrics, ``num-examples`` (the edge's total) and the edge-tier counters
    :data:`EDGE_TIER_METRICS` (``edge-rejected`` adds the ``malformed`` replies the edge
    could not even parse to the aggregator's rejections).
    """
    return RecordDict({
        records.COMPRESSED_DELTA: payload_to_record(aggregate.payload),
        records.METRICS: MetricRecord({
            **aggregate.metrics,
            records.NUM_EXAMPLES: aggregate.num_examples,
            EDGE_ACCEPTED: aggregate.accepted,
            EDGE_REJECTED: aggregate.rejected + malformed,
            EDGE_BYTES_IN: bytes_device_to_edge,
        }),
    })


def is_edge_aggregate(reply: Message) -> bool:
    """Whether ``reply`` comes from an edge (as opposed to a device)."""
    metrics = reply.content.metric_records.get(records.METRICS)
    return metrics is not None and EDGE_ACCEPTED in metrics
