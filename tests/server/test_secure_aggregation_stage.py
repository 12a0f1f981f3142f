"""SecAgg+ through Flower's Message API: the real ServerApp and ClientApp, in process, with
devices lost at each stage, flat and through simulated edges."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmosaic import records
from fedmosaic.clients.app import app as client_app
from fedmosaic.clients.secure_aggregation import mask_training_reply
from fedmosaic.config import RunConfig
from fedmosaic.privacy.secure_aggregation import DeviceSession, FieldEncoding, ProtocolError
from fedmosaic.server import secure_aggregation as secure_stage
from fedmosaic.server.app import warn_pointless_settings
from fedmosaic.server.edge import secure_relay
from fedmosaic.server.secure_aggregation import (
    ProtocolFigures,
    SecureAggregationServer,
    SecureAggregationStage,
    SecureRound,
)
from fedmosaic.server.validation import ReplyContract
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

        self.weights: list[float] = []
        content = secure_stage._aggregate_content

        def spy_content(accepted, mean, reference, weights):
            self.weights.extend(weights)
            return content(accepted, mean, reference, weights)

        monkeypatch.setattr(secure_stage, "_aggregate_content", spy_content)
        self.masked_codes: dict[int, np.ndarray] = {}  # device index → the codes it masked
        mask = DeviceSession.mask

        def spy_mask(session, codes, bits):
            self.masked_codes[session.index] = codes.astype(np.uint64)
            return mask(session, codes, bits)

        monkeypatch.setattr(DeviceSession, "mask", spy_mask)
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
    # central DP accounts six devices' weights, not two edges'
    assert sorted(spy.weights) == sorted(min(n, 1000) for _, n, _ in spy.encoded)
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
        members = reply.content[records.SECURE_AGGREGATION]["members"]
        summed = sum(spy.masked_codes[u] for u in members) & np.uint64(2**32 - 1)
        assert np.mean(words.astype(np.uint64) == summed) < 0.01  # not its devices' plain sum
        assert abs(words.mean() / 2**32 - 0.5) < 0.02


def test_a_sum_whose_weights_differ_from_the_replies_is_not_used(tmp_path, monkeypatch, caplog):
    """A device that claims other examples than it masked: central DP would account wrong
    weights, so the round's aggregate is dropped."""
    def misreporting(message, context):
        reply = client_app(message, context)
        if (message.metadata.message_type == "train" and not reply.has_error()
                and context.node_config[records.PARTITION_ID] == 1):
            metrics = reply.content[records.METRICS]
            metrics[records.NUM_EXAMPLES] = int(metrics[records.NUM_EXAMPLES]) - 1
        return reply

    config = run_in_process({**RUN, "out-dir": str(tmp_path), "run-name": "run"},
                            client_app=misreporting)
    assert "the unmasked weights add up to" in caplog.text
    np.testing.assert_allclose(server_update(config, initial_arrays(tmp_path)), 0.0)


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


CONTRACT = ReplyContract.for_devices(RunConfig.from_mapping(RUN), num_modalities=1)
AVERAGED = {records.TRAIN_LOSS: 0.5, records.EMBEDDING_VARIANCE: 0.1, records.DATASET_SIZE: 5}


@st.composite
def masked_contents(draw):
    """A masked reply, honest or broken in one of the ways a device could break it."""
    kind = draw(st.sampled_from(["honest", "dtype", "shape", "members", "missing", "range",
                                 "records", "words", "metrics", "sender", "examples",
                                 "payload"]))
    relayed = draw(st.booleans())
    words = np.arange(SIZE, dtype=np.uint16)
    member = draw(st.integers(1, 3))
    members: object = [member]
    sender = COHORT.nodes[member]
    metrics: dict = {records.NUM_EXAMPLES: 5, **AVERAGED}
    examples: object = [5]
    if kind == "dtype":
        words = words.astype(draw(st.sampled_from([np.int32, np.float32, np.uint64,
                                                   np.uint32])))
    elif kind == "shape":
        words = np.zeros(draw(st.integers(0, 20).filter(lambda n: n != SIZE)), np.uint16)
    elif kind == "range":
        words[draw(st.integers(0, SIZE - 1))] = draw(st.integers(2**10, 2**16 - 1))
    elif kind == "members":
        members = draw(st.sampled_from([[], [0], [4], [1, 1], [2**40], [-1], [1.0],
                                        [float("inf")], ["1"], [b"1"], [True], 5, b"x", 2.0]))
    elif kind == "metrics":
        key = draw(st.sampled_from(sorted(metrics)))
        if draw(st.booleans()):
            del metrics[key]
        else:
            metrics[key] = draw(st.sampled_from([float("nan"), -1.0, 1e30, [1.0, 2.0],
                                                 float("inf")]))
    elif kind == "sender":
        if relayed:  # an edge's sum may come from any node; only its accounts are checked
            kind, examples = "examples", [5, 5]
        else:
            sender = COHORT.nodes[member % 3 + 1]
    elif kind == "examples":
        examples = draw(st.sampled_from([[], [4], [5, 0], [0], [-5], ["5"], [5.0], 5, None]))
        if not relayed:  # a device's own reply has no list: its num-examples is its account
            metrics[records.NUM_EXAMPLES] = draw(st.sampled_from([0, -5, 10**9, 5.5, [5]]))
    content = RecordDict({records.METRICS: MetricRecord(metrics)})
    array = Array(words)
    if kind == "payload":  # a header that claims a terabyte, or bytes NumPy cannot read
        array = draw(st.sampled_from([
            Array(dtype="uint16", shape=(2**36,), stype="numpy.ndarray", data=array.data),
            Array(dtype="uint16", shape=(SIZE,), stype="numpy.ndarray", data=b""),
            Array(dtype="uint16", shape=(SIZE,), stype="numpy.ndarray",
                  data=draw(st.binary(max_size=200))),
            Array(dtype="uint16", shape=(SIZE,), stype="torch.Tensor", data=array.data)]))
    if kind != "records":
        key = records.SECAGG_MASKED_WORDS if kind != "words" else "other"
        content[records.SECAGG_MASKED] = ArrayRecord({key: array})
    if kind != "missing":
        secure = {"members": members}
        if relayed and examples is not None:
            secure["examples"] = examples
        content[records.SECURE_AGGREGATION] = ConfigRecord(secure)
    reply = Message(content, metadata=Metadata(
        run_id=1, message_id="m", src_node_id=sender, dst_node_id=0, reply_to_message_id="i",
        group_id="1", created_at=0.0, ttl=60.0, message_type="train"))
    return kind, relayed, reply


@settings(max_examples=int(os.environ.get("FEDMOSAIC_FUZZ_EXAMPLES", "120")), deadline=None)
@given(case=masked_contents())
def test_a_masked_reply_either_fits_the_round_or_raises_a_value_error(case):
    kind, relayed, reply = case
    stage = SecureAggregationServer(clip=1.0, max_weight=100, device_bits=8, timeout=1.0,
                                    contract=CONTRACT, relayed=relayed)
    if kind == "honest":
        members, words = stage._masked(reply, COHORT, SIZE, set())
        assert words.dtype == np.uint64 and list(members.values()) == [5]
        with pytest.raises(ValueError, match="each counted once"):  # a member counted twice
            stage._masked(reply, COHORT, SIZE, {1, 2, 3})
    else:
        with pytest.raises(ValueError):
            stage._masked(reply, COHORT, SIZE, set())


def test_unusable_share_and_unmask_answers_drop_their_device_without_allocating(monkeypatch):
    """A count where bytes belong (``bytes(10**12)`` would allocate a terabyte), a string index
    or a truthy non-bool flag drops that device at that stage; the others go on."""
    cohort = _cohort_of_three()
    stage = SecureAggregationServer(clip=1.0, max_weight=100, device_bits=8, timeout=1.0,
                                    contract=CONTRACT)
    state = SecureRound({}, grid=None, figures=ProtocolFigures(), cohort=cohort)  # type: ignore[arg-type]
    node = {u: cohort.nodes[u] for u in cohort.nodes}

    def honest_share(u):
        peers = sorted(cohort.neighbours[u])
        return {"receivers": peers, "ciphertexts": [b"sealed"] * len(peers)}

    shares = {node[1]: ConfigRecord(honest_share(1)),
              node[2]: ConfigRecord({**honest_share(2), "ciphertexts": [10**12, 10**12]}),
              node[3]: ConfigRecord({**honest_share(3), "receivers": ["1", "2"]})}
    monkeypatch.setattr(stage, "_exchange", lambda *args: shares)
    assert set(stage._share(1, state)) == {1}
    assert state.figures.dropped["share"] == 2

    answers = {node[1]: ConfigRecord({"owners": [1, 2], "shares": [b"a", b"b"],
                                      "is-seed": [True, True]}),
               node[2]: ConfigRecord({"owners": [1], "shares": [10**12], "is-seed": [True]}),
               node[3]: ConfigRecord({"owners": [1], "shares": [b"a"], "is-seed": [1]})}
    monkeypatch.setattr(stage, "_exchange", lambda *args: answers)
    assert set(stage._unmask(1, state, {1, 2, 3}, set())) == {1}
    assert state.figures.dropped["unmask"] == 2


def test_a_training_message_without_shares_is_refused_before_training(tmp_path):
    """Under secure aggregation a device never trains for a reply that would leave unmasked."""
    trained = []
    message = Message(RecordDict({records.ARRAYS: ArrayRecord()}), metadata=Metadata(
        run_id=1, message_id="m", src_node_id=1, dst_node_id=5, reply_to_message_id="",
        group_id="1", created_at=0.0, ttl=60.0, message_type="train"))

    def context(secure):
        mapping = RunConfig.from_mapping({**RUN, "secure-aggregation": secure,
                                          "out-dir": str(tmp_path)}).to_mapping()
        return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config=mapping)

    with pytest.raises(ProtocolError, match="does not train"):
        mask_training_reply(message, context(True), lambda m, c: trained.append(m))
    assert not trained
    mask_training_reply(message, context(False), lambda m, c: trained.append(m))
    assert trained == [message]


def test_an_edge_takes_each_device_once_under_its_own_index_and_the_cohorts_word_type():
    config = RunConfig.from_mapping({**RUN, "num-edges": 2})
    contract = ReplyContract.for_devices(config, num_modalities=1, below_edge=True)
    plan = secure_relay.RelayPlan({10: 1, 11: 2, 12: 3, 13: 4}, np.dtype(np.uint16))

    def reply(node, member, words, edge=0):
        content = RecordDict({
            records.METRICS: MetricRecord({records.NUM_EXAMPLES: node, records.EDGE_ID: edge,
                                           **AVERAGED}),
            records.SECAGG_MASKED: ArrayRecord({records.SECAGG_MASKED_WORDS: Array(words)}),
            records.SECURE_AGGREGATION: ConfigRecord({"members": [member]})})
        return Message(content, metadata=Metadata(
            run_id=1, message_id=str(node), src_node_id=node, dst_node_id=0,
            reply_to_message_id="i", group_id="1", created_at=0.0, ttl=60.0,
            message_type="train"))

    ones = np.ones(SIZE, dtype=np.uint16)
    replies = [reply(12, 3, ones.astype(np.uint32)),  # first, in another word type
               reply(10, 1, ones), reply(11, 1, ones),  # node 11 under node 10's index
               reply(10, 1, ones),  # node 10 again
               reply(13, 4, ones * 2**15), reply(11, 2, ones * 2**15)]
    relayed, _, rejected = secure_relay.relay_masked_sums(replies, contract, SIZE, plan, 1)
    assert rejected == 3 and len(relayed) == 1
    secure = relayed[0].content[records.SECURE_AGGREGATION]
    assert list(secure["members"]) == [1, 2, 4] and list(secure["examples"]) == [10, 11, 13]
    words = relayed[0].content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS].numpy()
    assert words.dtype == np.uint16 and (words == 1).all()  # 1 + 2**15 + 2**15 wraps at 2**16
    assert relayed[0].content[records.METRICS][records.NUM_EXAMPLES] == 34


@pytest.mark.parametrize(("settings", "unused"), [
    ({"device-bits": 8}, "device-bits"),
    ({"device-bits": 8, "secure-aggregation": True}, None),  # it quantizes to 8-bit levels
    ({"device-bits": 8, "edge-topk": 0.5, "secure-aggregation": True}, "edge-topk have"),
])
def test_flat_runs_warn_only_of_compression_settings_that_do_nothing(settings, unused, caplog):
    warn_pointless_settings(RunConfig.from_mapping({**RUN, "secure-aggregation": False,
                                                    **settings}))
    if unused is None:
        assert "no effect with num-edges=0" not in caplog.text
    else:
        assert f"{unused}" in caplog.text and "no effect with num-edges=0" in caplog.text
