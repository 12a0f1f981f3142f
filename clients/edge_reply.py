"""A device's training reply below an edge: its compressed delta, error feedback in its state.

With ``num-edges > 0`` a device does not send its weights ``w`` but the codec's payload of
``c = (w − w_global) + r``, where ``r`` is what earlier rounds' compression dropped; it then
keeps ``r ← c − D(payload)`` in ``context.state`` (error feedback, Stich et al. 2018,
arXiv:1809.07599), which a SuperNode and the simulation keep across rounds. The reply also
reports the device's ``edge-id`` so the edge tier can route it.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict

from fedmosaic import records
from fedmosaic.compression import (
    CompressionSpec,
    arrays_of,
    arrays_record,
    compress,
    payload_to_record,
)
from fedmosaic.compression.topology import device_edge
from fedmosaic.config import RunConfig


def compressed_delta(trained: dict[str, torch.Tensor], global_arrays: ArrayRecord,
                     spec: CompressionSpec, context: Context,
                     rng: np.random.Generator) -> ArrayRecord:
    """The payload record of ``trained − global_arrays`` plus the residual in ``context.state``.

    The new residual replaces the old one in ``context.state[device-residual]``.
    """
    delta = {name: tensor.detach().cpu().numpy() - global_arrays[name].numpy()
             for name, tensor in trained.items()}
    state = context.state
    residual = (arrays_of(state[records.DEVICE_RESIDUAL])
                if records.DEVICE_RESIDUAL in state.array_records else None)
    payload, new_residual = compress(delta, spec, residual, rng)
    state[records.DEVICE_RESIDUAL] = arrays_record(new_residual)
    return payload_to_record(payload)


def edge_reply_content(trained: dict[str, torch.Tensor], global_arrays: ArrayRecord,
                       metrics: MetricRecord, config: RunConfig, context: Context,
                       server_round: int) -> RecordDict:
    """Reply content for the edge: ``compressed-delta`` and ``metrics`` with ``edge-id``."""
    edge_id = device_edge(context.node_config, config.num_clients, config.num_edges)
    partition = int(context.node_config.get(records.PARTITION_ID, edge_id))
    rng = np.random.default_rng([config.seed, partition, server_round])
    spec = CompressionSpec(topk_ratio=config.device_topk, bits=config.device_bits)
    return RecordDict({
        records.COMPRESSED_DELTA: compressed_delta(trained, global_arrays, spec, context, rng),
        records.METRICS: MetricRecord({**metrics, records.EDGE_ID: edge_id}),
    })
