"""SecAgg+ through Flower's Message API: the real ServerApp and ClientApp, in process, with
devices lost at each stage, flat and through simulated edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Message

from fedmosaic import records
from fedmosaic.clients.app import app as client_app
from fedmosaic.config import RunConfig
from fedmosaic.privacy.secure_aggregation import FieldEncoding
from fedmosaic.server.edge import secure_relay
from fedmosaic.server.secure_aggregation import SecureAggregationStage
from fedmosaic.simulation.inprocess import run_in_process

RUN = {"num-clients": 6, "num-server-rounds": 1, "local-epochs": 1, "fraction-evaluate": 0.0,
       "secure-aggregation": True, "seed": 3}
STAGES = {"keys": f"query.{records.SECAGG_KEYS_ACTION}",
          "share": f"query.{records.SECAGG_SHARE_ACTION}", "mask": "train",
          "unmask": f"query.{records.SECAGG_UNMASK_ACTION}"}


class Spy:
    """What the devices encoded, what the server's stage received, and the global arrays."""

    def __init__(self, monkeypatch):
        self.encoded: list[tuple[np.ndarray, int, np.ndarray]] = []
        self.cloud_replies: list[Message] = []
        self.edge_replies: list[Message] = []
        encode = FieldEncoding.encode
        aggregate = SecureAggregationStage.aggregate_train
        relay = secure_relay.relay_masked_sums

        def spy_encode(encoding, update, num_examples):
            codes = encode(encoding, update, num_examples)
            self.encoded.append((update.copy(), num_examples, codes))
            return codes

        def spy_aggregate(stage, server_round, replies):
            replies = list(replies)
            self.cloud_replies.extend(replies)
            return aggregate(stage, server_round, replies)

        def spy_relay(replies, *args):
            replies = list(replies)
            self.edge_replies.extend(replies)
            return relay(replies, *args)

        monkeypatch.setattr(FieldEncoding, "encode", spy_encode)
        monkeypatch.setattr(SecureAggregationStage, "aggregate_train", spy_aggregate)
        monkeypatch.setattr("fedmosaic.server.edge.hierarchy.relay_masked_sums", spy_relay)

    def expected_mean(self, max_weight: int = 1000) -> np.ndarray:
        weights = np.array([min(n, max_weight) for _, n, _ in self.encoded], dtype=float)
        return (np.stack([u for u, _, _ in self.encoded]) * weights[:, None]).sum(0) / weights.sum()


def dropping(message_type: str, partition: int):
    """The ClientApp, except that device ``partition`` is lost when ``message_type`` arrives."""
    def app(message, context):
        if (message.metadata.message_type == message_type
                and context.node_config[records.PARTITION_ID] == partition):
            raise ConnectionError("device lost")
        return client_app(message, context)
    return app


def server_update(config: RunConfig, initial: dict[str, np.ndarray]) -> np.ndarray:
    state = torch.load(config.run_dir() / "checkpoints" / "round-001.pt",
                       weights_only=False)["model_state"]
    return np.concatenate([(state[name].numpy().astype(np.float64) - initial[name]).ravel()
                           for name in sorted(initial)])


def initial_arrays(tmp_path) -> dict[str, np.ndarray]:
    from fedmosaic.task import build_model, cached_dataset
    config = RunConfig.from_mapping({**RUN, "out-dir": str(tmp_path)})
    return {k: v.numpy().astype(np.float64)
            for k, v in build_model(config, cached_dataset(config)).state_dict().items()}


@pytest.mark.parametrize("stage", [None, *STAGES])
def test_aggregate_equals_the_plain_weighted_mean_with_a_device_lost_at_each_stage(
        tmp_path, monkeypatch, stage):
    spy = Spy(monkeypatch)
    app = client_app if stage is None else dropping(STAGES[stage], partition=2)
    config = run_in_process({**RUN, "out-dir": str(tmp_path), "run-name": "run"},
                            client_app=app)
    # lost before masking: its update never exists; lost at unmasking: it is in the sum
    assert len(spy.encoded) == (5 if stage in ("keys", "share", "mask") else 6)
    np.testing.assert_allclose(server_update(config, initial_arrays(tmp_path)),
                               spy.expected_mean(), atol=2e-6)
    history = (config.run_dir() / "history.jsonl").read_text()
    assert '"cohort": ' + ("5" if stage == "keys" else "6") in history
    # the server's stage got masked vectors only, never a device's weights
    assert spy.cloud_replies and all(
        records.ARRAYS not in r.content.array_records for r in spy.cloud_replies
        if not r.has_error())


def test_through_edges_no_tier_holds_a_device_update_in_the_clear(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    config = run_in_process({**RUN, "num-edges": 2, "out-dir": str(tmp_path),
                             "run-name": "edges"})
    np.testing.assert_allclose(server_update(config, initial_arrays(tmp_path)),
                               spy.expected_mean(), atol=2e-6)
    # what the edges received: six masked vectors, none equal to (or near) a device's codes
    assert len(spy.edge_replies) == 6
    codes = [c for _, _, c in spy.encoded]
    for reply in spy.edge_replies:
        assert records.ARRAYS not in reply.content.array_records
        words = reply.content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS].numpy()
        assert all(np.mean(words.astype(np.uint64) == c) < 0.01 for c in codes)
        assert abs(words.mean() / 2**32 - 0.5) < 0.02  # uniform over the words, not codes
    # what the cloud received: one masked sum per edge, each of three devices
    assert len(spy.cloud_replies) == 2
    for reply in spy.cloud_replies:
        assert records.ARRAYS not in reply.content.array_records
        assert len(reply.content[records.SECURE_AGGREGATION]["members"]) == 3
        words = reply.content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS].numpy()
        summed = sum(c.astype(np.uint64) for c in codes) & np.uint64(2**32 - 1)
        assert np.mean(words.astype(np.uint64) == summed) < 0.01


def test_a_malformed_masked_reply_is_rejected_and_its_device_unmasked_as_dropped(
        tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    truncated = []

    def truncating(message, context):
        reply = client_app(message, context)
        if (message.metadata.message_type == "train"
                and context.node_config[records.PARTITION_ID] == 4):
            truncated.append(spy.encoded[-1])  # its update, just encoded
            words = reply.content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS]
            reply.content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS] = type(words)(
                words.numpy()[:-5])
        return reply

    config = run_in_process({**RUN, "out-dir": str(tmp_path), "run-name": "run"},
                            client_app=truncating)
    spy.encoded = [e for e in spy.encoded if e is not truncated[0]]
    np.testing.assert_allclose(server_update(config, initial_arrays(tmp_path)),
                               spy.expected_mean(), atol=2e-6)
    history = (config.run_dir() / "history.jsonl").read_text()
    assert '"secure-aggregation": 1' in history and '"mask": 1' in history
