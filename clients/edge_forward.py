"""The cloud run's ClientApp on an edge SuperNode: hand the round to the edge, reply upward.

An edge machine joins the cloud federation as a SuperNode with node config
``edge-id=E edge-spool=DIR``. When the cloud sends it a training message, :func:`forward_to_edge`
writes the global weights and train config to the spool (under the cloud's round, or the
message's ``edge-request`` number from an asynchronous cloud), waits for the edge's sub-round server
(``server/edge/edge_server.py``) to aggregate its devices, and replies to the cloud with the
edge's compressed aggregate, exactly the reply the simulated edge tier builds.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict

from fedmosaic import records
from fedmosaic.compression import arrays_of, payload_to_record
from fedmosaic.compression.spool import EdgeRequest, EdgeSpool
from fedmosaic.config import RunConfig


def is_edge_node(context: Context) -> bool:
    """Whether this SuperNode is an edge (its node config names a spool)."""
    return records.EDGE_SPOOL in context.node_config


def forward_to_edge(msg: Message, context: Context) -> Message:
    """Run the cloud's training round on this edge's devices; reply with the aggregate.

    Raises:
        ValueError: if the node config lacks ``edge-id`` or the message lacks ``server-round``.
        RuntimeError: if the edge accepted no device update this round.
    """
    if records.EDGE_ID not in context.node_config:
        raise ValueError(f"an edge SuperNode needs node config '{records.EDGE_ID}', got keys "
                         f"{sorted(context.node_config)}")
    config = dict(msg.content.config_records.get(records.CONFIG, {}))
    if records.SERVER_ROUND not in config:
        raise ValueError(f"expected '{records.SERVER_ROUND}' in the train config, got "
                         f"{sorted(config)}")
    edge_id = int(context.node_config[records.EDGE_ID])
    server_round = int(config[records.SERVER_ROUND])
    number = int(config.get(records.EDGE_REQUEST, server_round))  # type: ignore[arg-type]
    spool = EdgeSpool(str(context.node_config[records.EDGE_SPOOL]))
    spool.put_request(EdgeRequest(edge_id, server_round, arrays_of(msg.content[records.ARRAYS]),
                                  config, number))
    # the edge answers within half the cloud's round-timeout; wait as long as the cloud does
    reply = spool.take_reply(number, RunConfig.from_mapping(context.run_config).round_timeout)
    if not reply.payload:
        raise RuntimeError(f"edge {edge_id} accepted no device update in round {server_round} "
                           f"(request {number})")
    content = RecordDict({records.COMPRESSED_DELTA: payload_to_record(reply.payload),
                          records.METRICS: MetricRecord(reply.metrics)})
    return Message(content=content, reply_to=msg)
