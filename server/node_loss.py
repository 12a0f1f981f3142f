"""Rounds that survive node loss: a bounded wait for nodes, one reply per sent message.

Flower 1.41 (measured): sampling loops forever in ``sample_nodes`` while fewer than
``min_available_nodes`` nodes are online, so after a SuperNode dies the next round never
starts; a message to a dead node comes back, about 42 s later, as an error reply that carries
the SuperLink's node id, not the dead node's; and a message with no reply by ``timeout`` is
simply missing from the replies. :class:`NodeLossStage`, the outermost stage of the
synchronous server chain, closes all three:

1. **Bounded sampling.** Before the aggregator samples, it waits up to ``node-wait`` seconds
   (``round-timeout`` in round 1, while devices connect) for ``min_available_nodes`` nodes.
   The aggregator samples from a snapshot of the nodes online then (a ``GridView``),
   so a node leaving in between cannot send it back into Flower's endless wait.
   If fewer are online, the aggregator's minimums (``min_available_nodes``,
   ``min_train_nodes``, ``min_evaluate_nodes``) are lowered to the nodes online for this one
   call, so it samples from those (evaluation in the same round does not wait again); the
   next round asks for the full number again, so a node
   that comes back (a restarted SuperNode) rejoins. With no node online for
   ``round-timeout`` seconds the run ends with :class:`NoNodesError`.
2. **Replies attributed to their node.** Every reply is matched to the message it answers
   (``reply_to_message_id``); an error reply is rebuilt as a reply to that message, so its
   ``src_node_id`` is the node that failed and every later stage (ledger, validation, risk)
   counts the failure against the right device.
3. **No silent gaps.** A sent message without a reply when the round's ``timeout`` ran out
   gets an error reply (reason ``timeout``, code :data:`TIMEOUT_CODE`), so metering counts it
   among ``failed_replies`` and the round closes with the replies that came.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic.server.grid_view import GridView
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")

TIMEOUT_CODE = 408
"""Error code of the reply :class:`NodeLossStage` writes for a message nobody answered."""
MINIMUMS = ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
"""The aggregator attributes that make Flower's ``sample_nodes`` wait for nodes."""


class NoNodesError(RuntimeError):
    """No node was online for a whole ``round-timeout``."""


def innermost(strategy: Strategy) -> Strategy:
    """The aggregator at the bottom of a chain of wrappers (each holds the next as ``strategy``)."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy  # type: ignore[attr-defined]
    return strategy


class NodeLossStage(StrategyWrapper):
    """Bound the wait for nodes, attribute error replies, and fill in missing replies."""

    def __init__(self, strategy: Strategy, node_wait: float, round_timeout: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(strategy)
        self.node_wait, self.round_timeout = node_wait, round_timeout
        self._clock, self._sleep = clock, sleep
        self._sent: dict[tuple[int, str], list[Message]] = {}
        self.short_rounds: dict[int, tuple[int, int]] = {}
        """Round -> (nodes online, nodes asked for) where sampling went on with fewer."""
        self.timeouts: Counter[int] = Counter()
        """Round -> messages (train and evaluate) that got no reply in time."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample from the nodes online (waiting a bounded time) and remember what was sent."""
        with self._online_nodes(server_round, grid) as online:
            messages = list(self.strategy.configure_train(server_round, arrays, config, online))
        self._sent[server_round, "train"] = messages
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate one reply per sent message, each attributed to its node."""
        return self.strategy.aggregate_train(
            server_round, self._one_reply_each(server_round, "train", list(replies)))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """As :meth:`configure_train`, for federated evaluation (no wait when it is off)."""
        if getattr(innermost(self.strategy), "fraction_evaluate", None) == 0.0:
            return self.strategy.configure_evaluate(server_round, arrays, config, grid)
        with self._online_nodes(server_round, grid) as online:
            messages = list(self.strategy.configure_evaluate(server_round, arrays, config,
                                                             online))
        self._sent[server_round, "evaluate"] = messages
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """As :meth:`aggregate_train`, for federated evaluation."""
        return self.strategy.aggregate_evaluate(
            server_round, self._one_reply_each(server_round, "evaluate", list(replies)))

    @contextlib.contextmanager
    def _online_nodes(self, server_round: int, grid: Grid) -> Iterator[Grid]:
        """The grid seen as the nodes online once the wait is over.

        A snapshot the aggregator samples from, so a node leaving meanwhile cannot send it
        back into Flower's endless wait.
        """
        aggregator = innermost(self.strategy)
        wanted = max(1, getattr(aggregator, "min_available_nodes", 1))
        patience = self.round_timeout if server_round <= 1 else self.node_wait
        if server_round in self.short_rounds:  # training already waited this round
            patience = 0.0
        started = self._clock()
        nodes = list(grid.get_node_ids())
        while len(nodes) < wanted and (self._clock() - started < patience or not nodes):
            if not nodes and self._clock() - started >= self.round_timeout:
                raise NoNodesError(f"round {server_round}: no node came online within "
                                   f"round-timeout={self.round_timeout:g} s")
            self._sleep(1.0)
            nodes = list(grid.get_node_ids())
        snapshot = GridView(grid, nodes)
        if len(nodes) >= wanted:
            yield snapshot
            return
        log.warning("round %d: %d node(s) online after %.0f s, %d asked for; sampling from "
                    "those online", server_round, len(nodes), self._clock() - started, wanted)
        self.short_rounds[server_round] = (len(nodes), wanted)
        saved = {name: getattr(aggregator, name) for name in MINIMUMS
                 if hasattr(aggregator, name)}
        for name, value in saved.items():
            setattr(aggregator, name, min(value, len(nodes)))
        try:
            yield snapshot
        finally:
            for name, value in saved.items():
                setattr(aggregator, name, value)

    def _one_reply_each(self, server_round: int, kind: str,
                        replies: list[Message]) -> list[Message]:
        asked_for = self._sent.pop((server_round, kind), [])
        if not all(m.metadata.message_id for m in asked_for):  # a grid that names no message
            return replies
        sent = {m.metadata.message_id: m for m in asked_for}
        completed = []
        for reply in replies:
            asked = sent.pop(reply.metadata.reply_to_message_id, None)
            completed.append(reply if asked is None else attributed(reply, asked))
        for asked in sent.values():
            log.warning("round %d: node %d sent no %s reply within round-timeout=%g s",
                        server_round, asked.metadata.dst_node_id, kind, self.round_timeout)
            self.timeouts[server_round] += 1
            completed.append(timeout_reply(asked, self.round_timeout))
        return completed


def attributed(reply: Message, asked: Message) -> Message:
    """``reply`` to ``asked``, charged to the node ``asked`` went to.

    An error reply from elsewhere (the SuperLink, for a dead node) is rebuilt as from that node.
    """
    if not reply.has_error() or reply.metadata.src_node_id == asked.metadata.dst_node_id:
        return reply
    log.warning("node %d failed (%s); the error came from node %d", asked.metadata.dst_node_id,
                reply.error.reason, reply.metadata.src_node_id)
    return Message(reply.error, reply_to=asked)


def timeout_reply(asked: Message, seconds: float) -> Message:
    """The error reply (reason ``timeout``) for ``asked``, unanswered after ``seconds``."""
    return Message(Error(TIMEOUT_CODE, f"timeout: no reply within {seconds:g} s"),
                   reply_to=asked)
