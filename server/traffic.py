"""Count the bytes every message would put on the wire, around any Flower strategy.

Flower 1.41 ships a message as a tree of *inflatable objects* (message, record dict, records,
arrays, array chunks), each serialized with ``deflate()`` and pushed to the object store.
A message's size is the sum of ``len(obj.deflate())`` over that tree: the exact bytes that
cross the link, whether the run is a simulation (where nothing is actually serialized) or a
deployment.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedmosaic.strategies.wrapper import StrategyWrapper

SIZE_CACHE_ENTRIES = 65536
"""Objects whose deflated size :func:`message_bytes` remembers (a few rounds' worth)."""
_sizes: OrderedDict[str, int] = OrderedDict()


def message_bytes(message: Message) -> int:
    """Serialized size of ``message``: its content and metadata, as Flower sends them.

    Each object's deflated size is remembered by its object id (a hash of its content, so the
    cache is exact): the messages of a round share the global model's arrays, serialized then
    once, not once per device, and a reply measured by the traffic meter is not serialized
    again by the risk stage.
    """
    total = 0
    for object_id, obj in get_all_nested_objects(message).items():
        size = _sizes.get(object_id)
        if size is None:
            size = _sizes[object_id] = len(obj.deflate())
            if len(_sizes) > SIZE_CACHE_ENTRIES:
                _sizes.popitem(last=False)
        total += size
    return total


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
