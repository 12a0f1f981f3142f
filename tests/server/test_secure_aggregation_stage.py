"""SecAgg+ through Flower's Message API: the real ServerApp and ClientApp, in process, with
devices lost at each stage, flat and through simulated edges."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _cohort_of_three():
    from fedmosaic.privacy.secure_aggregation import Cohort, DeviceSession
    sessions = [DeviceSession.advertise(1) for _ in range(3)]
    cohort = Cohort.form({i: (s.encryption.public, s.masking.public)
                          for i, s in enumerate(sessions)}, 1.0, 100, 8)
    cohort.route({u: sessions[cohort.nodes[u]].share(u, cohort.threshold(u),
                                                     cohort.neighbourhood(u))
                  for u in cohort.nodes})
    return cohort  # 8-bit codes: 3 x 254 < 2**10, in 16-bit words


COHORT = _cohort_of_three()
SIZE = 8


@st.composite
def masked_contents(draw):
    """A masked reply's content, honest or broken in one of the ways a device could break it."""
    kind = draw(st.sampled_from(["honest", "dtype", "shape", "members", "missing", "range",
                                 "records"]))
    words = np.arange(SIZE, dtype=np.uint16)
    members: list = [draw(st.integers(1, 3))]
    if kind == "dtype":
        words = words.astype(draw(st.sampled_from([np.int32, np.float32, np.uint64,
                                                   np.uint32])))
    elif kind == "shape":
        words = np.zeros(draw(st.integers(0, 20).filter(lambda n: n != SIZE)), np.uint16)
    elif kind == "range":
        words[draw(st.integers(0, SIZE - 1))] = draw(st.integers(2**10, 2**16 - 1))
    elif kind == "members":
        members = draw(st.sampled_from([[], [0], [4], [1, 1], [2**40], [-1], [1.0],
                                         [float("inf")], ["1"], [b"1"], [True]]))
    content = RecordDict({records.METRICS: MetricRecord({records.NUM_EXAMPLES: 5})})
    if kind != "records":
        content[records.SECAGG_MASKED] = ArrayRecord({records.SECAGG_MASKED_WORDS: Array(words)})
    if kind != "missing":
        content[records.SECURE_AGGREGATION] = ConfigRecord({"members": members})
    return kind, content


@settings(max_examples=int(os.environ.get("FEDMOSAIC_FUZZ_EXAMPLES", "60")), deadline=None)
@given(case=masked_contents())
def test_a_masked_reply_either_fits_the_round_or_raises_a_value_error(case):
    kind, content = case
    stage = SecureAggregationStage(FedAvg(), clip=1.0, max_weight=100, device_bits=8,
                                   timeout=1.0)
    reply = Message(content, metadata=Metadata(
        run_id=1, message_id="m", src_node_id=5, dst_node_id=0, reply_to_message_id="i",
        group_id="1", created_at=0.0, ttl=60.0, message_type="train"))
    if kind == "honest":
        members, words = stage._masked(reply, COHORT, SIZE, set())
        assert words.dtype == np.uint64 and len(members) == 1
        with pytest.raises(ValueError, match="each counted once"):  # a member counted twice
            stage._masked(reply, COHORT, SIZE, {1, 2, 3})
    else:
        with pytest.raises(ValueError):
            stage._masked(reply, COHORT, SIZE, set())
