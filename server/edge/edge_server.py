"""An edge's sub-round server: the ServerApp of a long-lived run on the edge's own SuperLink.

In deployment each edge machine runs a SuperLink for its devices. The app is submitted there
once with ``edge-role=edge`` and ``edge-spool=DIR``; :func:`serve_edge` then, for each of the
``num-server-rounds`` cloud rounds (asynchronous: each request, below): waits for the cloud's
request in the spool (written by the cloud run's ClientApp on the edge's SuperNode, see
``clients/edge_forward.py``), waits for the edge's devices (all of them, or after
``node-wait`` seconds those connected), sends them the global weights and the cloud's train
config, aggregates their compressed deltas (the whole sub-round fits in half the cloud's
``round-timeout``, so the edge answers before the cloud gives up on it; a dead device's error
is logged under that device) with :class:`~fedmosaic.server.edge.aggregation.EdgeAggregator`
(the same code the simulation runs) and writes the compressed aggregate back to the spool.
Because the run lives as long as the federation, the devices' Contexts (error-feedback
residuals) and the edge's own residual persist across rounds. No device update ever leaves the
edge.

With ``secure-aggregation`` each edge runs SecAgg+ among its own devices
(:class:`~fedmosaic.server.secure_aggregation.SecureAggregationServer`, per-edge secure
aggregation): the devices send masked vectors, the edge unmasks only their weighted mean
update, compresses that as its aggregate and sends it up. So the edge learns the mean of its
surviving devices' updates (at least 2 of them), never one device's; the cloud learns each
edge's aggregate. The key exchange's three steps each wait at most ``round-timeout / 16``.

Under an asynchronous cloud (``mode = async``) the edge is one of the cloud's nodes: it may
get several requests in one version or none for a long while, numbered by the cloud
(``edge-request``), and serves them in order, each a sub-round like the above; the cloud
scales the edge's aggregate by its staleness (``server/async_rounds.py``). The cloud cannot
say which request is its last, so the edge serves until its run is stopped (``deploy-local``
stops it with the cloud's; on real machines, ``flwr stop`` on the edge's SuperLink).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmosaic import records
from fedmosaic.compression import CompressionSpec, arrays_record, compress
from fedmosaic.compression.spool import EdgeReply, EdgeSpool
from fedmosaic.compression.topology import edge_of
from fedmosaic.config import RunConfig
from fedmosaic.server.edge.aggregation import Arrays, DeviceUpdate, EdgeAggregator
from fedmosaic.server.edge.configured import device_contract, edge_aggregator
from fedmosaic.server.edge.messages import (
    edge_aggregate_content,
    receive_device_replies,
)
from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.node_loss import attributed
from fedmosaic.server.secure_aggregation import SecureAggregationServer

log = logging.getLogger("fedmosaic")
ASYNC_REQUEST_WAIT = math.inf
"""Seconds an edge under an asynchronous cloud waits for its next request: no limit."""


def request_timeout(config: RunConfig) -> float:
    """How long the edge waits for the cloud's next request.

    Two cloud rounds and a node wait: a cloud round waits at most ``node-wait`` for nodes and
    ``round-timeout`` for replies.
    """
    return 2 * config.round_timeout + config.node_wait


def expected_devices(edge_id: int, num_clients: int, num_edges: int) -> int:
    """Devices the topology puts under ``edge_id``: ``#{p : edge_of(p, N, E) = edge_id}``."""
    return sum(edge_of(p, num_clients, num_edges) == edge_id for p in range(num_clients))


def wait_for_devices(grid: Grid, count: int, patience: float, timeout: float,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """Node IDs of the edge's devices: all ``count`` once connected.

    After ``patience`` seconds, those connected: a lost device does not stall its edge.

    Raises:
        TimeoutError: if no device is connected after ``timeout`` seconds.
    """
    started = clock()
    while len(nodes := sorted(grid.get_node_ids())) < count:
        waited = clock() - started
        if nodes and waited >= patience:
            log.warning("edge: %d of %d devices connected after %.0f s; the sub-round goes on "
                        "with them", len(nodes), count, waited)
            break
        if waited >= timeout:
            raise TimeoutError(f"expected {count} devices on this edge's SuperLink within "
                               f"{timeout:.0f} s, none connected")
        sleep(1.0)
    return nodes


def serve_edge(grid: Grid, config: RunConfig) -> None:
    """Serve the cloud's requests from the spool ``config.edge_spool`` (module docstring).

    Synchronous: ``num-server-rounds`` of them. Asynchronous (``mode = async``, or a request
    numbered by the cloud, ``edge-request``): until the run is stopped.

    Raises:
        SpoolTimeoutError: if a synchronous cloud's request does not come within
            :func:`request_timeout`.
    """
    spool = EdgeSpool(config.edge_spool)
    aggregator: EdgeAggregator | None = None
    declared: dict[int, int] = {}  # each device's first dataset-size, across rounds
    secure = SecureAggregationServer(
        config.secure_aggregation_clip, config.secure_aggregation_max_weight,
        config.device_bits, config.round_timeout / 16, device_contract(config)
    ) if config.secure_aggregation else None
    asynchronous = config.mode == "async"
    served = number = 0
    while asynchronous or served < config.num_server_rounds:
        # an asynchronous cloud may leave an edge idle for any time, and never says which
        # request is its last: the edge waits for the next one until its run is stopped
        request = spool.take_next_request(
            number, ASYNC_REQUEST_WAIT if asynchronous else request_timeout(config))
        number, served = request.number, served + 1
        asynchronous = asynchronous or records.EDGE_REQUEST in request.config
        if aggregator is None:
            aggregator = edge_aggregator(config, request.edge_id)
        # the whole sub-round fits in half the cloud's round-timeout, so the edge answers the
        # cloud before the cloud gives up on it: a quarter for devices to be online, the rest
        # for their replies
        started, budget = time.monotonic(), config.round_timeout / 2
        devices = wait_for_devices(
            grid, expected_devices(request.edge_id, config.num_clients, config.num_edges),
            patience=budget / 2 if served == 1 else min(config.node_wait, budget / 2),
            timeout=budget / 2)
        content = RecordDict({records.ARRAYS: arrays_record(request.arrays),
                              records.CONFIG: ConfigRecord(request.config)})
        messages = [Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                            group_id=str(number)) for node in devices]
        if secure is not None:
            messages = secure.open(number, request.arrays, grid, messages)
        replies = grid.send_and_receive(messages, timeout=budget - (
            time.monotonic() - started) - (secure.timeout if secure is not None else 0.0))
        by_id = {m.metadata.message_id: m for m in messages}
        replies = [attributed(r, by_id[r.metadata.reply_to_message_id])
                   if r.metadata.reply_to_message_id in by_id else r for r in replies]
        if secure is not None:
            updates, averaged = unmasked_update(secure.close(number, replies),
                                                request.arrays)
            malformed = secure.rejections.count(number)
            bytes_in = sum(message_bytes(r) for r in replies)
        else:
            received = receive_device_replies(replies, device_contract(config), number,
                                              declared)
            updates = received.by_edge.get(request.edge_id, [])
            malformed = sum(received.rejected.values())
            bytes_in = sum(received.bytes_by_edge.values())
        aggregate = aggregator.aggregate(updates, request.arrays, number)
        if aggregate is None:
            spool.put_reply(number, EdgeReply(b"", {}))
            continue
        if secure is not None:  # one unmasked mean stands for its devices
            aggregate = dataclasses.replace(aggregate, accepted=averaged)
        sent = edge_aggregate_content(aggregate, bytes_in, malformed=malformed)
        spool.put_reply(number, EdgeReply(aggregate.payload,
                                          dict(sent[records.METRICS])))  # type: ignore[arg-type]
        log.info("edge %d, round %d (request %d): %d devices averaged, %d rejected",
                 request.edge_id, request.server_round, number, aggregate.accepted,
                 aggregate.rejected + malformed)


def unmasked_update(aggregate: Message | None, reference: Arrays
                    ) -> tuple[list[DeviceUpdate], int]:
    """Per-edge secure aggregation: the unmasked mean as the edge aggregator's one update.

    Returns:
        ``([update], devices averaged)``, or ``([], 0)`` when the round could not be unmasked
        (the protocol logged why).
    """
    if aggregate is None:
        return [], 0
    arrays = aggregate.content[records.ARRAYS]
    delta = {name: arrays[name].numpy() - reference[name] for name in reference}
    payload, _ = compress(delta, CompressionSpec(), None, np.random.default_rng(0))
    metrics = aggregate.content[records.METRICS]
    update = DeviceUpdate(device="secure aggregate", payload=payload,
                          num_examples=int(metrics[records.NUM_EXAMPLES]),  # type: ignore[call-overload]
                          metrics={key: float(metrics[key])  # type: ignore[arg-type]
                                   for key in records.EDGE_AGGREGATE_METRICS})
    return [update], len(aggregate.content[records.SECURE_AGGREGATION]["weights"])  # type: ignore[arg-type]
