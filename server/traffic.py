"""Count the bytes every message would put on the wire, around any Flower strategy.

A message's size is :func:`~fedmosaic.server.message_size.message_bytes`: the exact bytes of
its distinct inflatable objects as Flower ships them, whether the run is a simulation (where
nothing is actually serialized) or a deployment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic.server.message_size import message_bytes
from fedmosaic.strategies.wrapper import StrategyWrapper


@dataclass
class RoundTraffic:
    """Bytes and message counts of one round, both directions, train and evaluate."""

    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    replies_up: int = 0
    failed_replies: int = 0

    def add_down(self, messages: list[Message]) -> None:
        """Count messages the server sends."""
        self.bytes_down += sum(message_bytes(m) for m in messages)
        self.messages_down += len(messages)

    def add_up(self, replies: list[Message]) -> None:
        """Count replies the server receives (a reply with an error carries no content)."""
        for reply in replies:
            if reply.has_error():
                self.failed_replies += 1
            else:
                self.bytes_up += message_bytes(reply)
                self.replies_up += 1


class MeteredStrategy(StrategyWrapper):
    """Delegates every hook to ``strategy`` and records the traffic of each round.

    Works with any ``flwr.serverapp.strategy.Strategy``; ``rounds[r]`` holds round ``r``'s
    :class:`RoundTraffic`, ``train_metrics[r]`` and ``evaluate_metrics[r]`` what the wrapped
    strategy aggregated from the clients' metrics.
    """

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.rounds: dict[int, RoundTraffic] = defaultdict(RoundTraffic)
        self.train_metrics: dict[int, MetricRecord | None] = {}
        self.evaluate_metrics: dict[int, MetricRecord | None] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure through the wrapped strategy, then count what goes out."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.rounds[server_round].add_down(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Count what came back, then aggregate through the wrapped strategy."""
        replies = list(replies)
        self.rounds[server_round].add_up(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        self.train_metrics[server_round] = metrics
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure federated evaluation through the wrapped strategy; count it."""
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self.rounds[server_round].add_down(messages)
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Count the evaluation replies, then aggregate their metrics."""
        replies = list(replies)
        self.rounds[server_round].add_up(replies)
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        self.evaluate_metrics[server_round] = metrics
        return metrics
