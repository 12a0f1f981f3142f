"""Which edge aggregator each device belongs to.

In simulation the assignment is a pure function of the partition ID: with ``N`` devices and
``E`` edges, device ``p`` belongs to edge ``floor(p * E / N)``, so edges hold contiguous,
equally sized (±1) blocks of devices and the mapping never depends on sampling or timing. In
deployment a SuperNode states its edge in its node config (``--node-config "edge-id=1 ..."``),
which wins over the computed assignment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmosaic import records


def edge_of(partition_id: int, num_clients: int, num_edges: int) -> int:
    """The edge of device ``partition_id``: ``floor(partition_id * num_edges / num_clients)``.

    Args:
        partition_id: the device's partition, in ``[0, num_clients)``.
        num_clients: devices in the federation (>= 1).
        num_edges: edge aggregators, in ``[1, num_clients]``.

    Returns:
        The edge ID in ``[0, num_edges)``.

    Raises:
        ValueError: if an argument is outside its range.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 1 <= num_edges <= num_clients:
        raise ValueError(f"num_edges must lie in [1, num_clients={num_clients}], got {num_edges}")
    if not 0 <= partition_id < num_clients:
        raise ValueError(
            f"partition_id must lie in [0, num_clients={num_clients}), got {partition_id}"
        )
    return partition_id * num_edges // num_clients


def device_edge(node_config: Mapping[str, Any], num_clients: int, num_edges: int) -> int:
    """A device's edge: its node config's ``edge-id`` if set, else :func:`edge_of` its partition.

    Raises:
        ValueError: if ``edge-id`` is not in ``[0, num_edges)``, or neither ``edge-id`` nor
            ``partition-id`` is in the node config.
    """
    if records.EDGE_ID in node_config:
        edge_id = int(node_config[records.EDGE_ID])
        if not 0 <= edge_id < num_edges:
            raise ValueError(
                f"node config {records.EDGE_ID}={edge_id} must lie in [0, num-edges={num_edges})"
            )
        return edge_id
    if records.PARTITION_ID not in node_config:
        raise ValueError(
            f"node config needs '{records.EDGE_ID}' or '{records.PARTITION_ID}' to place the "
            f"device under an edge, got keys {sorted(node_config)}"
        )
    return edge_of(int(node_config[records.PARTITION_ID]), num_clients, num_edges)
