"""What the run config means for the edge tier: each edge's aggregator, the cloud's view.

Both the simulated tier (:class:`~fedmosaic.server.edge.hierarchy.HierarchicalStrategy`) and an
edge machine (:func:`~fedmosaic.server.edge.edge_server.serve_edge`) build their
:class:`~fedmosaic.server.edge.aggregation.EdgeAggregator` here, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses

from fedmosaic.compression import CompressionSpec
from fedmosaic.config import RunConfig
from fedmosaic.server.edge.aggregation import EdgeAggregator
from fedmosaic.server.edge.robust import edge_combiner
from fedmosaic.server.validation import ReplyContract, update_validator
from fedmosaic.task import cached_dataset


def edge_aggregator(config: RunConfig, edge_id: int) -> EdgeAggregator:
    """Edge ``edge_id``: ``edge-topk``/``edge-bits`` upward, the run's validator and combiner."""
    return EdgeAggregator(
        edge_id, CompressionSpec(topk_ratio=config.edge_topk, bits=config.edge_bits),
        update_validator(config), config.seed,
        edge_combiner(config.edge_aggregation, config.trim_fraction))


def device_contract(config: RunConfig) -> ReplyContract:
    """What an edge expects from each of its devices (``edge-id`` among the metrics)."""
    return ReplyContract.for_devices(config, len(cached_dataset(config).specs), below_edge=True)


def cloud_config(config: RunConfig) -> RunConfig:
    """The config the cloud strategy is built from.

    With ``edge-role=cloud`` (deployment) the run's SuperNodes are the edges: the cloud
    strategy samples and waits for ``num-edges`` nodes and sends no federated evaluation (the
    edges hold no data; the cloud still evaluates centrally). Under ``secure-aggregation``
    the edges run it among their own devices, so the cloud's view has it off. Otherwise
    ``config`` itself.
    """
    if config.num_edges and config.edge_role == "cloud":
        return dataclasses.replace(config, num_clients=config.num_edges, fraction_evaluate=0.0,
                                   secure_aggregation=False)
    return config
