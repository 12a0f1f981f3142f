"""A view of a Flower grid that shows chosen nodes: what an aggregator samples from.

Flower's strategies sample from ``grid.get_node_ids()``. Asynchronous rounds show the
aggregator one idle node at a time (``server/async_rounds.py``); the node-loss stage shows it a
snapshot of the nodes online (``server/node_loss.py``). Every other call goes to the grid.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class GridView(Grid):
    """A grid that shows only ``nodes``: the aggregator's sampling then picks exactly them.

    ``population`` is every node of the grid (default: ``nodes``), for stages that need to
    know who is connected.
    """

    def __init__(self, grid: Grid, nodes: list[int], population: list[int] | None = None
                 ) -> None:
        self.grid, self.nodes = grid, list(nodes)
        self.population = list(nodes) if population is None else population

    def get_node_ids(self) -> list[int]:
        """The chosen nodes."""
        return list(self.nodes)

    def create_message(self, *args: object, **kwargs: object) -> Message:  # noqa: D102
        return self.grid.create_message(*args, **kwargs)  # type: ignore[arg-type]

    def push_messages(self, *args: object, **kwargs: object) -> Iterable[str]:  # noqa: D102
        return self.grid.push_messages(*args, **kwargs)  # type: ignore[arg-type]

    def pull_messages(self, *args: object, **kwargs: object) -> Iterable[Message]:  # noqa: D102
        return self.grid.pull_messages(*args, **kwargs)  # type: ignore[arg-type]

    def send_and_receive(self, *args: object, **kwargs: object) -> Iterable[Message]:  # noqa: D102
        return self.grid.send_and_receive(*args, **kwargs)  # type: ignore[arg-type]

    def set_run(self, run_id: int) -> None:  # noqa: D102
        self.grid.set_run(run_id)

    @property
    def run(self) -> object:  # noqa: D102
        return self.grid.run

    def get_nodes(self) -> object:  # noqa: D102
        return self.grid.get_nodes()
