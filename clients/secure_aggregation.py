"""A device's part in secure aggregation: three query handlers and the mod that masks its reply.

The server's stage (``server/secure_aggregation.py``) drives each round: ``query.secagg_keys``
(:func:`advertise_keys`), ``query.secagg_share`` (:func:`share_keys`), then the training
message carrying the neighbours' encrypted shares, whose reply :func:`mask_training_reply`
masks, then ``query.secagg_unmask`` (:func:`unmask_shares`). Between messages the device keeps
its :class:`~fedmosaic.privacy.secure_aggregation.DeviceSession` in ``context.state``
(``secagg-session``), so it survives ``device-state = disk`` like the rest of its state.

Masking is a ClientApp mod outside the round's replay (``clients/replay.py``): a round asked
again after the server resumed is answered with the reply already computed, masked afresh
for the new session, so the device neither trains nor spends ε twice and the masks still
cancel. The update the device masks is ``w − w_global`` of every array, in name order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedmosaic import records
from fedmosaic.clients.edge_forward import is_edge_node
from fedmosaic.compression.topology import device_edge
from fedmosaic.config import RunConfig
from fedmosaic.privacy.secure_aggregation import DeviceSession, FieldEncoding, ProtocolError
from fedmosaic.privacy.secure_aggregation.keys import KeyPair


def flat_update(trained: ArrayRecord, received: ArrayRecord) -> np.ndarray:
    """``w − w_global`` of every array, flattened in name order (``float64``).

    Raises:
        ValueError: if the two records do not hold the same arrays.
    """
    if sorted(trained) != sorted(received):
        raise ValueError(f"the trained arrays {sorted(trained)[:5]} are not the received "
                         f"{sorted(received)[:5]}")
    return np.concatenate([(trained[name].numpy().astype(np.float64)
                            - received[name].numpy().astype(np.float64)).ravel()
                           for name in sorted(received)])


def save_session(context: Context, session: DeviceSession) -> None:
    """Keep ``session`` in ``context.state``."""
    record = ConfigRecord({
        "round": session.round, "index": session.index, "threshold": session.threshold,
        "masked": session.masked, "answered": session.answered,
        "c-private": session.encryption.private, "c-public": session.encryption.public,
        "s-private": session.masking.private, "s-public": session.masking.public})
    peers, owners = sorted(session.neighbours), sorted(session.shares)
    record["self-seed"] = session.self_seed
    record["neighbours"] = peers
    record["neighbour-c"] = [session.neighbours[v][0] for v in peers]
    record["neighbour-s"] = [session.neighbours[v][1] for v in peers]
    record["owners"] = owners
    record["seed-shares"] = [session.shares[v][0] for v in owners]
    record["key-shares"] = [session.shares[v][1] for v in owners]
    context.state[records.SECAGG_SESSION] = record


def load_session(context: Context, server_round: int) -> DeviceSession:
    """The session kept for ``server_round``.

    Raises:
        ProtocolError: if the device has no session for that round.
    """
    record = context.state.config_records.get(records.SECAGG_SESSION)
    if record is None or int(record["round"]) != server_round:
        kept = None if record is None else int(record["round"])
        raise ProtocolError(f"no secure-aggregation session for round {server_round} (kept: "
                            f"{kept}); the keys of a round are advertised first")
    return DeviceSession(
        round=server_round,
        encryption=KeyPair(bytes(record["c-private"]), bytes(record["c-public"])),
        masking=KeyPair(bytes(record["s-private"]), bytes(record["s-public"])),
        index=int(record["index"]), threshold=int(record["threshold"]),
        self_seed=bytes(record["self-seed"]),
        neighbours={int(v): (bytes(c), bytes(s)) for v, c, s in zip(
            record["neighbours"], record["neighbour-c"], record["neighbour-s"], strict=True)},
        shares={int(v): (bytes(b), bytes(k)) for v, b, k in zip(
            record["owners"], record["seed-shares"], record["key-shares"], strict=True)},
        masked=bool(record["masked"]), answered=bool(record["answered"]))


def _received(message: Message) -> ConfigRecord:
    return message.content.config_records[records.SECURE_AGGREGATION]


def _reply(message: Message, values: dict) -> Message:
    return Message(RecordDict({records.SECURE_AGGREGATION: ConfigRecord(values)}),
                   reply_to=message)


def advertise_keys(message: Message, context: Context) -> Message:
    """Stage 1: fresh key pairs for the round; reply with the public halves."""
    session = DeviceSession.advertise(int(_received(message)[records.SERVER_ROUND]))
    save_session(context, session)
    return _reply(message, {"c-public": session.encryption.public,
                            "s-public": session.masking.public})


def share_keys(message: Message, context: Context) -> Message:
    """Stage 2: the encrypted shares for each neighbour the server names."""
    received = _received(message)
    session = load_session(context, int(received[records.SERVER_ROUND]))
    peers = [int(v) for v in received["neighbours"]]
    neighbours = {v: (bytes(c), bytes(s)) for v, c, s in zip(
        peers, received["neighbour-c"], received["neighbour-s"], strict=True)}
    sealed = session.share(int(received["index"]), int(received["threshold"]), neighbours)
    save_session(context, session)
    receivers = sorted(sealed)
    return _reply(message, {"receivers": receivers,
                            "ciphertexts": [sealed[v] for v in receivers]})


def unmask_shares(message: Message, context: Context) -> Message:
    """Stage 4: shares of the survivors' self-mask seeds and of the dropped devices' keys."""
    received = _received(message)
    session = load_session(context, int(received[records.SERVER_ROUND]))
    shares = session.unmask({int(v) for v in received.get("survivors", [])},
                            {int(v) for v in received.get("dropped", [])})
    save_session(context, session)
    owners = sorted(shares)
    return _reply(message, {"owners": owners, "shares": [shares[v][0] for v in owners],
                            "is-seed": [shares[v][1] for v in owners]})


def mask_training_reply(message: Message, context: Context,
                        call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: under secure aggregation, send the trained update masked, never in clear.

    The reply's ``arrays`` become ``secagg-masked`` (the masked codes of ``w − w_global`` and
    the device's weight); its metrics stay (``num-examples``, DP metadata, ``edge-id`` below an
    edge). Other messages pass through, and so does the cloud's training message to an edge's
    SuperNode (the edge runs secure aggregation among its own devices).

    Raises:
        ProtocolError: under ``secure-aggregation``, for a training message without the
            round's routed shares, before any training (its reply would leave in the clear).
        ValueError: if the trained update has a non-finite value (it cannot be encoded).
    """
    if message.metadata.message_type != MessageType.TRAIN or is_edge_node(context):
        return call_next(message, context)  # an edge's SuperNode forwards to its sub-round
    if records.SECAGG_SHARES not in message.content.config_records:
        if RunConfig.from_mapping(context.run_config).secure_aggregation:
            raise ProtocolError("secure-aggregation=true: a training message must carry the "
                                "round's routed shares; this one does not, so the device does "
                                "not train (its update would leave unmasked)")
        return call_next(message, context)
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    received = _received(message)
    session = load_session(context, int(received[records.SERVER_ROUND]))
    routed = message.content.config_records[records.SECAGG_SHARES]
    session.receive({int(v): bytes(c) for v, c in zip(
        routed.get("senders", []), routed.get("ciphertexts", []), strict=True)})
    encoding = FieldEncoding(float(received["clip"]), int(received["levels"]),
                             int(received["max-weight"]), int(received["bits"]))
    metrics = reply.content.metric_records[records.METRICS]
    update = flat_update(reply.content[records.ARRAYS], message.content[records.ARRAYS])
    masked = session.mask(encoding.encode(update, int(metrics[records.NUM_EXAMPLES])),
                          encoding.bits)
    save_session(context, session)
    config = RunConfig.from_mapping(context.run_config)
    if config.num_edges:
        metrics[records.EDGE_ID] = device_edge(context.node_config, config.num_clients,
                                               config.num_edges)
    content = RecordDict({name: record for name, record in reply.content.items()
                          if name != records.ARRAYS})
    words = Array(masked.astype(encoding.dtype))
    content[records.SECAGG_MASKED] = ArrayRecord({records.SECAGG_MASKED_WORDS: words})
    content[records.SECURE_AGGREGATION] = ConfigRecord({"members": [session.index]})
    return Message(content, reply_to=message)
