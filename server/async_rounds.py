r"""Asynchronous, staleness-bounded rounds: buffered aggregation on Flower's Message API.

FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation",
arXiv:2106.06639). The server keeps up to ``concurrency`` devices training: each gets the
global model :math:`w_{v}` of the moment (version :math:`v`, the number of aggregations so
far) and a new device starts as soon as one replies. A reply :math:`w_i` trained on version
:math:`v_i` and received at version :math:`v` has staleness :math:`s_i = v - v_i`; it is

* rejected (reason ``stale``, counted and logged) if :math:`s_i >` ``max-staleness``;
* else buffered as the update :math:`\Delta_i = g(s_i)\,(w_i - w_{v_i})` with
  :math:`g(s) = 1/\sqrt{1 + s}` (FedBuff's staleness scaling).

When ``buffer-size`` = K replies are buffered (a failed reply counts, as a synchronous round
ends with its failures, so a run always ends), the server chain aggregates them into
:math:`w_{v+1}`: each buffered reply enters the chain rewritten as :math:`w_{v} + \Delta_i`, so
the aggregator (FedAvg: :math:`w_{v+1} = w_v + \sum_i n_i \Delta_i / \sum_i n_i`, trimmed
mean, ...), the update validation (norm bound against :math:`w_v`), the privacy ledger and
the traffic meter work unchanged. Version :math:`v + 1` is then round :math:`v + 1` of the
run: centrally evaluated, recorded and checkpointed like a synchronous round.

Each training message carries its number in the run (``edge-request``: 1, 2, ... over all
nodes): a deployed edge (``edge-role = cloud``, where the edges are the cloud's nodes) files
requests by it, since it may get several in one version; the numbers only grow, also for an
edge that reconnects under a new node id.

Under the edge tier device (or deployed edge) replies carry compressed deltas
:math:`\Delta_i` instead of weights: the loop hands the tier the global model of each version
and each stale reply's weight :math:`g(s_i)`, and the reply's edge averages
:math:`g(s_i)\,\Delta_i` onto :math:`w_v` (``server/edge/hierarchy.py``; a deployed edge's
aggregate is scaled by the cloud), the same update as above. The staleness filter then sits
outside the tier, which turns device replies into edge replies (no DP-SGD runs under an edge
tier, so no device's spend goes unentered).

Privacy: every reply goes through the ledger, stale ones too (a stale reply's device spent
its budget all the same, so it is charged once per update it trained, whether used or not),
and :class:`StalenessFilter`, inside the ledger, drops the stale ones. Work still in flight when
the last aggregation is due is waited for and goes into it, marked ``unused``: entered in the ledger
before the last round is checkpointed, never aggregated. A checkpoint of an earlier round does
not hold the spend of work still in flight or buffered at that moment. Central DP is refused
with ``mode = async``: its accounting amplifies by sampling m of N devices uniformly each
round; here who trains next depends on who finished first (device speed), which is not a
uniform sample, so no sampling amplification applies.

Order of replies. Deployed, replies are handled as they come. With a simulated latency
(``server/latency.py``) each dispatch's arrival time is known when it is sent, and the loop
handles replies in that order, waiting for the real reply of the next one to arrive, so the
run is the same whatever the simulation's CPUs do.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.server.edge.hierarchy import HierarchicalStrategy
from fedmosaic.server.grid_view import GridView
from fedmosaic.server.latency import SimulatedClock
from fedmosaic.server.node_loss import NoNodesError, attributed, timeout_reply
from fedmosaic.server.validation import Rejections
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")

STALE = "stale"
"""Rejection reason of a reply older than ``max-staleness`` versions."""
UNUSED = "unused"
"""Rejection reason of work in flight when the last version is made (entered, not used)."""
POLL_SECONDS = 0.05
UNDELIVERED_CODE = 503
"""Error code of the reply written for work the SuperLink did not take."""


def staleness_weight(staleness: int) -> float:
    """FedBuff's scaling of a reply ``staleness`` versions old: ``1 / sqrt(1 + staleness)``."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)


class StalenessFilter(StrategyWrapper):
    """Drops the replies the asynchronous loop marked stale; counts them (``stale``).

    It sits inside the privacy ledger, which has entered every reply's spend before. A mark is
    the reply object's ``id``, valid while the loop's buffer holds the reply: the marks are
    cleared after every aggregation.
    """

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.marked: dict[int, str] = {}
        """``id(reply)`` → reason (:data:`STALE` or :data:`UNUSED`) of the current buffer."""
        self.rejections = Rejections()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies not marked stale."""
        kept = []
        for reply in replies:
            reason = self.marked.get(id(reply))
            if reason is not None:
                self.rejections.add(server_round, reason, node=reply.metadata.src_node_id)
            else:
                kept.append(reply)
        # the marks belong to this buffer only (also those the ledger dropped before this stage)
        self.marked.clear()
        return self.strategy.aggregate_train(server_round, kept) if kept else (None, None)


@dataclass
class Dispatch:
    """One device's work in flight."""

    node: int
    version: int
    arrives_at: float
    """Simulated arrival time (order of handling), or the real send time without one."""
    order: int
    message: Message
    """What was sent (a reply that never comes is answered by a ``timeout`` error to it)."""
    sent_at: float
    """``time.monotonic()`` when it was sent."""


def rewritten(reply: Message, sent: dict[str, np.ndarray], current: dict[str, np.ndarray],
              weight: float) -> None:
    """Replace ``reply``'s arrays ``w_i`` by ``current + weight (w_i - sent)`` (float arrays).

    A reply whose arrays do not match the model is left as it is: validation rejects it.
    """
    arrays = reply.content.array_records.get(records.ARRAYS)
    if arrays is None or set(arrays) != set(current):
        return
    updated = {}
    for key, array in arrays.items():
        value = array.numpy()
        if value.shape != current[key].shape:
            return
        if not np.issubdtype(value.dtype, np.floating):  # counters follow the current model
            updated[key] = Array(current[key])
            continue
        updated[key] = Array((current[key] + weight * (value - sent[key])).astype(value.dtype))
    content = RecordDict(dict(reply.content.items()))
    content[records.ARRAYS] = ArrayRecord(updated)
    reply.content = content


class AsyncRounds:
    """The asynchronous loop of a run (module docstring).

    Args:
        config: ``concurrency``, ``buffer-size``, ``max-staleness``, ``num-server-rounds``,
            ``seed``, ``learning-rate``.
        strategy: The server chain's outermost stage.
        staleness: The chain's :class:`StalenessFilter`.
        clock: The chain's :class:`SimulatedClock` (``None``: real arrival order).
        edges: The chain's edge tier (``None``: replies carry weights, rewritten here).
    """

    def __init__(self, config: RunConfig, strategy: Strategy, staleness: StalenessFilter,
                 clock: SimulatedClock | None = None,
                 edges: HierarchicalStrategy | None = None) -> None:
        self.config = config
        self.strategy, self.staleness, self.clock, self.edges = strategy, staleness, clock, edges
        self.rng = random.Random(config.seed)
        self.dispatched = 0
        self.stale_rejected = 0
        self.failures = 0
        self.timeouts = 0
        self.unused_at_end = 0
        self._late: dict[str, Dispatch] = {}
        """Work timed out whose reply may still come (its device counts as busy)."""
        self._late_replies: list[Message] = []
        """Replies that came after their time-out, for the next aggregation (marked unused)."""

    def summary(self) -> dict[str, int]:
        """What the loop did: trainings sent, stale replies, failed replies, time-outs.

        ``timeouts``: work without a reply within ``round-timeout`` (each is also among
        ``failures``, or among ``unused_at_end`` when it was still in flight at the end).
        """
        return {"dispatched": self.dispatched, "stale_rejected": self.stale_rejected,
                "failures": self.failures, "timeouts": self.timeouts,
                "unused_at_end": self.unused_at_end}

    def run(self, grid: Grid, initial: ArrayRecord,
            evaluate: Callable[[int, ArrayRecord], MetricRecord]) -> ArrayRecord:
        """Run ``num-server-rounds`` aggregations; return the final global arrays."""
        config = self.config
        nodes = self._wait_for_nodes(grid)
        latency = self.clock.latency(grid) if self.clock is not None else None
        evaluate(0, initial)
        version, current = 0, initial
        if self.edges is not None:
            self.edges.remember_global(1, current)
        versions = {0: {k: a.numpy() for k, a in initial.items()}}
        in_flight: dict[str, Dispatch] = {}
        arrived: dict[str, Message] = {}
        queue: list[tuple[float, int, str]] = []
        buffer: list[Message] = []
        fresh = 0
        now = 0.0

        def dispatch(count: int) -> None:
            nodes[:] = sorted(grid.get_node_ids())  # a device that reconnects is used again
            busy = {d.node for d in [*in_flight.values(), *self._late.values()]}
            idle = [n for n in nodes if n not in busy]
            for node in self.rng.sample(idle, min(count, len(idle))):
                train_config = ConfigRecord({records.LEARNING_RATE: config.learning_rate,
                                             records.EDGE_REQUEST: self.dispatched + 1})
                messages = list(self.strategy.configure_train(
                    version + 1, current, train_config, GridView(grid, [node], nodes)))
                accepted = {i for i in grid.push_messages(messages) if i}
                for message in messages:  # the grids name each pushed message in place
                    self.dispatched += 1
                    message_id = message.metadata.message_id
                    if not message_id or message_id not in accepted:  # refused or too large
                        message_id = f"undelivered-{self.dispatched}"
                        arrived[message_id] = Message(Error(UNDELIVERED_CODE, "undelivered: "
                                                            "the SuperLink did not take it"),
                                                      reply_to=message)
                    arrives = (now + latency.seconds(node, self.dispatched)
                               if latency is not None else time.monotonic())
                    in_flight[message_id] = Dispatch(node, version, arrives, self.dispatched,
                                                     message, time.monotonic())
                    heapq.heappush(queue, (arrives, self.dispatched, message_id))

        dispatch(config.async_concurrency)
        while version < config.num_server_rounds:
            if not in_flight:  # every device lost or still late: wait, boundedly, for one
                self._await_a_device(grid, in_flight, arrived, dispatch, version)
            message_id, reply = self._next(grid, queue, in_flight, arrived, latency is not None)
            work = in_flight.pop(message_id)
            if latency is not None:
                now = work.arrives_at
            staleness = version - work.version
            if reply.has_error():
                self.failures += 1
                buffer.append(reply)  # counted by the traffic meter with the next aggregation
                fresh += 1  # as a synchronous round, a buffer ends with its failures
            elif staleness > config.max_staleness:
                self.stale_rejected += 1
                log.warning("async: the reply of node %d trained on version %d arrived at "
                            "version %d (staleness %d > max-staleness %d): rejected",
                            work.node, work.version, version, staleness, config.max_staleness)
                self.staleness.marked[id(reply)] = STALE
                buffer.append(reply)
            else:
                if staleness and self.edges is not None:  # a compressed delta: its edge scales
                    self.edges.staleness_weights[id(reply)] = staleness_weight(staleness)
                elif staleness:
                    rewritten(reply, versions[work.version], versions[version],
                              staleness_weight(staleness))
                buffer.append(reply)
                fresh += 1
            if fresh >= config.async_buffer:
                if version + 1 == config.num_server_rounds:  # the last: settle all work first
                    buffer += self._drain(grid, in_flight, arrived)
                buffer += self._late_replies  # came after their time-out: ledger, not model
                self._late_replies = []
                arrays, _ = self.strategy.aggregate_train(version + 1, buffer)
                version += 1
                if arrays is not None:
                    current = arrays
                versions[version] = {k: a.numpy() for k, a in current.items()}
                if self.edges is not None:
                    self.edges.remember_global(version + 1, current)
                for old in [v for v in versions if v < version - config.max_staleness]:
                    versions.pop(old)
                if self.clock is not None:
                    self.clock.at[version] = now
                evaluate(version, current)
                buffer, fresh = [], 0
            if version < config.num_server_rounds:
                dispatch(config.async_concurrency - len(in_flight))
        return current

    def _drain(self, grid: Grid, in_flight: dict[str, Dispatch],
               arrived: dict[str, Message]) -> list[Message]:
        """Wait for the work still in flight and return it marked :data:`UNUSED`.

        It goes into the last aggregation, so the ledger enters its spend before the last
        round is recorded and checkpointed, and the staleness filter keeps it out of the model.
        """
        while len(arrived) < len(in_flight):
            self._collect(grid, in_flight, arrived)
            if len(arrived) < len(in_flight):
                time.sleep(POLL_SECONDS)
        leftovers = [arrived.pop(i) for i in list(in_flight)]
        in_flight.clear()
        self.unused_at_end = len(leftovers)
        self.staleness.marked.update((id(reply), UNUSED) for reply in leftovers)
        if leftovers:
            log.info("async: %d replies of work in flight at the end enter the privacy ledger "
                     "and are not aggregated", len(leftovers))
        return leftovers

    def _collect(self, grid: Grid, in_flight: dict[str, Dispatch],
                 arrived: dict[str, Message]) -> None:
        """Pull what has come, each reply charged to its node; time out old work.

        Work without a reply after ``round-timeout`` seconds gets a ``timeout`` error reply, as
        in synchronous rounds (``server/node_loss.py``).
        """
        waiting = [i for i in in_flight if i not in arrived] + list(self._late)
        for reply in grid.pull_messages(waiting) if waiting else []:
            message_id = reply.metadata.reply_to_message_id
            if message_id in self._late:  # its time-out was handled; its spend still counts
                self._late.pop(message_id)
                self.staleness.marked[id(reply)] = UNUSED
                self._late_replies.append(reply)
            elif message_id in in_flight:
                arrived[message_id] = attributed(reply, in_flight[message_id].message)
        now = time.monotonic()
        for message_id, work in in_flight.items():
            if message_id not in arrived and now - work.sent_at > self.config.round_timeout:
                log.warning("async: node %d sent no reply within round-timeout=%g s",
                            work.node, self.config.round_timeout)
                self.timeouts += 1
                self._late[message_id] = work  # busy until its reply comes, if ever
                arrived[message_id] = timeout_reply(work.message, self.config.round_timeout)

    def _await_a_device(self, grid: Grid, in_flight: dict[str, Dispatch],
                        arrived: dict[str, Message], dispatch: Callable[[int], None],
                        version: int) -> None:
        """With nothing in flight, wait up to ``round-timeout`` for a device to send work to.

        Raises:
            NoNodesError: if none is connected and idle by then.
        """
        deadline = time.monotonic() + self.config.round_timeout
        while not in_flight:
            self._collect(grid, in_flight, arrived)  # a late reply frees its device
            dispatch(self.config.async_concurrency)
            if in_flight:
                return
            if time.monotonic() > deadline:
                raise NoNodesError(f"async: no device to send work to for round-timeout="
                                   f"{self.config.round_timeout:g} s, at version {version} "
                                   f"of {self.config.num_server_rounds}")
            time.sleep(1.0)

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        """The grid's nodes once ``num-clients`` are connected.

        After ``round-timeout`` seconds: those connected (at least one, else
        :class:`~fedmosaic.server.node_loss.NoNodesError`).
        """
        started = time.monotonic()
        while len(nodes := sorted(grid.get_node_ids())) < self.config.num_clients:
            if time.monotonic() - started > self.config.round_timeout:
                if not nodes:
                    raise NoNodesError(f"async: no device connected within round-timeout="
                                       f"{self.config.round_timeout:g} s")
                log.warning("async: %d of %d devices connected after %g s; starting with them",
                            len(nodes), self.config.num_clients, self.config.round_timeout)
                break
            log.info("async: waiting for devices: %d of %d connected", len(nodes),
                     self.config.num_clients)
            time.sleep(1.0)
        return nodes

    def _next(self, grid: Grid, queue: list[tuple[float, int, str]],
              in_flight: dict[str, Dispatch], arrived: dict[str, Message],
              simulated: bool) -> tuple[str, Message]:
        """The next reply to handle: the earliest simulated arrival, or the first to come."""
        while True:
            self._collect(grid, in_flight, arrived)
            if simulated:
                message_id = queue[0][2]
                if message_id in arrived:
                    heapq.heappop(queue)
                    return message_id, arrived.pop(message_id)
            elif arrived:
                message_id = next(iter(arrived))
                queue[:] = [q for q in queue if q[2] != message_id]
                heapq.heapify(queue)
                return message_id, arrived.pop(message_id)
            time.sleep(POLL_SECONDS)
