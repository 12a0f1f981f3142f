import numpy as np
import torch
from flwr.app import Context, MetricRecord, RecordDict

from fedmosaic import records
from fedmosaic.clients.edge_reply import compressed_delta, edge_reply_content
from fedmosaic.compression import CompressionSpec, arrays_record, decode, payload_from_record
from fedmosaic.config import RunConfig

GLOBAL = arrays_record({"w": np.zeros(4, np.float32)})


def context(node_config):
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config={})


def sent(record):
    return decode(payload_from_record(record))["w"]


def test_what_top_k_drops_stays_in_the_context_state_and_is_sent_next_round():
    ctx = context({"partition-id": 0})
    half = CompressionSpec(topk_ratio=0.5, bits=32)
    rng = np.random.default_rng(0)

    first = compressed_delta({"w": torch.tensor([5.0, 1.0, -3.0, 0.0])}, GLOBAL, half, ctx, rng)
    residual = ctx.state[records.DEVICE_RESIDUAL]["w"].numpy()
    second = compressed_delta({"w": torch.zeros(4)}, GLOBAL, half, ctx, rng)

    # k = ceil(0.5 * 4) = 2 of [5, 1, -3, 0]: 5 and -3 now, the dropped 1 next round
    np.testing.assert_allclose(sent(first), [5.0, 0.0, -3.0, 0.0])
    np.testing.assert_allclose(residual, [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(sent(second), [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(ctx.state[records.DEVICE_RESIDUAL]["w"].numpy(), np.zeros(4))


def test_the_reply_reports_the_edge_and_carries_the_payload_instead_of_weights():
    config = RunConfig.from_mapping({"num-clients": 10, "num-edges": 2})
    metrics = MetricRecord({records.NUM_EXAMPLES: 12})

    content = edge_reply_content({"w": torch.ones(4)}, GLOBAL, metrics, config,
                                 context({"partition-id": 7}), server_round=1)

    assert records.ARRAYS not in content
    assert content[records.METRICS][records.EDGE_ID] == 1  # floor(7 * 2 / 10)
    assert content[records.METRICS][records.NUM_EXAMPLES] == 12
    np.testing.assert_allclose(sent(content[records.COMPRESSED_DELTA]), np.ones(4))
