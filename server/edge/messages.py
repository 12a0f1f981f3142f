"""Edge-tier records in Flower messages: device replies in, edge aggregates out.

A device's training reply below an edge carries ``compressed-delta`` (the codec's payload in an
ArrayRecord) and ``metrics`` with ``num-examples`` and ``edge-id``; an edge's reply to the
cloud carries its aggregate's payload the same way, with ``num-examples`` = the edge's examples
the examples-weighted means of its devices' metrics, and the edge-tier counters
``edge-accepted``, ``edge-rejected`` and ``edge-bytes-in``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flwr.app import Message, Metadata, MetricRecord, RecordDict

from fedmosaic import records
from fedmosaic.compression import payload_from_record, payload_to_record
from fedmosaic.server.edge.aggregation import DeviceUpdate, EdgeAggregate, rejection_reason
from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.validation import (
    ReplyContract,
    dataset_size_bound,
    pin_dataset_size,
    require_records,
)

log = logging.getLogger("fedmosaic")


def device_update_from_reply(reply: Message, contract: ReplyContract,
                             declared: int | None = None,
                             scale: float = 1.0) -> tuple[int, DeviceUpdate]:
    """The edge ID a device reports and its update, once the reply fits ``contract``.

    ``scale`` becomes the update's :attr:`~fedmosaic.server.edge.aggregation.DeviceUpdate.scale`.

    Raises:
        RejectedUpdate: if the reply lacks the payload record or its metrics break the
            contract (``edge-id`` in range, ``num-examples`` bounded, every value finite).
        WireFormatError: if the payload record is not a codec payload.
    """
    content = reply.content
    require_records(content, records.COMPRESSED_DELTA, "a device reply below an edge")
    metrics = content.metric_records[records.METRICS]
    contract.check_metrics(metrics, declared)
    update = DeviceUpdate(
        device=str(reply.metadata.src_node_id),
        payload=payload_from_record(content[records.COMPRESSED_DELTA]),
        num_examples=int(metrics[records.NUM_EXAMPLES]),  # type: ignore[arg-type]
        metrics={k: float(metrics[k]) for k in records.EDGE_AGGREGATE_METRICS},  # type: ignore[arg-type]
        scale=scale,
    )
    return int(metrics[records.EDGE_ID]), update  # type: ignore[arg-type]


@dataclass
class ReceivedUpdates:
    """One round of device replies at the edge tier, sorted by edge.

    Attributes:
        by_edge: the well-formed updates of each edge.
        metadata: the metadata of each edge's first reply (what its reply upward mirrors).
        bytes_by_edge: serialized bytes of each edge's device replies.
        rejected: replies rejected at intake, by reason.
    """

    by_edge: dict[int, list[DeviceUpdate]] = field(default_factory=lambda: defaultdict(list))
    metadata: dict[int, Metadata] = field(default_factory=dict)
    bytes_by_edge: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    rejected: Counter[str] = field(default_factory=Counter)


def receive_device_replies(replies: Iterable[Message], contract: ReplyContract,
                           server_round: int,
                           declared: dict[int, int] | None = None,
                           scales: Mapping[int, float] | None = None) -> ReceivedUpdates:
    """Parse device replies; log and count the malformed ones (error replies are skipped).

    Nothing a device sends escapes as an exception: a reply that breaks the contract, carries
    no codec payload, or fails in any other way is rejected with its reason (``payload`` for a
    payload record that is not one) and the other replies go on. ``declared`` (kept by the
    caller across rounds) pins each node's first accepted ``dataset-size``, which bounds its
    ``num-examples`` from then on, as at the cloud. ``scales`` maps ``id(reply)`` to the
    :attr:`~fedmosaic.server.edge.aggregation.DeviceUpdate.scale` of that reply (default 1).
    """
    declared = {} if declared is None else declared
    scales = scales or {}
    received = ReceivedUpdates()
    for reply in replies:
        if reply.has_error():
            continue
        try:
            edge_id, update = device_update_from_reply(
                reply, contract, dataset_size_bound(declared, reply), scales.get(id(reply), 1.0))
        except Exception as error:  # noqa: BLE001 - a device's bytes must not end the round
            reason = rejection_reason(error)
            log.warning("round %d: rejected the reply of device %s: %s: %s", server_round,
                        reply.metadata.src_node_id, reason, error)
            received.rejected[reason] += 1
            continue
        pin_dataset_size(declared, reply)
        received.by_edge[edge_id].append(update)
        received.metadata.setdefault(edge_id, reply.metadata)
        received.bytes_by_edge[edge_id] += message_bytes(reply)
    return received


def edge_aggregate_content(aggregate: EdgeAggregate, bytes_device_to_edge: int,
                           malformed: int = 0) -> RecordDict:
    """The content of an edge's reply to the cloud.

    ``compressed-delta`` holds the aggregate's payload; ``metrics`` the devices' weighted
    metrics, ``num-examples`` (the edge's total) and the edge-tier counters
    :data:`records.EDGE_TIER_METRICS` (``edge-rejected`` adds the ``malformed`` replies the edge
    could not even parse to the aggregator's rejections).
    """
    return RecordDict({
        records.COMPRESSED_DELTA: payload_to_record(aggregate.payload),
        records.METRICS: MetricRecord({
            **aggregate.metrics,
            records.NUM_EXAMPLES: aggregate.num_examples,
            records.EDGE_ACCEPTED: aggregate.accepted,
            records.EDGE_REJECTED: aggregate.rejected + malformed,
            records.EDGE_BYTES_IN: bytes_device_to_edge,
        }),
    })
