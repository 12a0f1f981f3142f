"""One training reply per round of the run: a round asked again is answered again, not retrained.

When the server stops during round ``r`` and the run is resumed from its checkpoint of round
``r - 1`` (``server/continuation.py``), devices that already trained round ``r`` are asked for
it again. Training again would spend privacy budget a second time for one round and release a
second DP output of the same data. Instead the ClientApp mod :func:`replay_repeated_rounds`
keeps each device's last training reply with the round of the run it answered (Flower's
``server-round`` plus ``round-offset``, both in the message's config), the run's token (a
random ``run-token`` the server keeps in its checkpoints) and a digest of the global model it
trained from; when a training message asks for that same round of that same run with that
same model it sends the kept reply again, without training: re-sending a release is
post-processing and costs no privacy. The token and the model keep a kept reply from answering
any other request: a new run reusing the run name (and seed), or a resume from an older
checkpoint.

Where the reply is kept: with a node-config ``state-dir`` in ``<state-dir>/<run>/partition-
<id>-last-reply.pb`` (a SuperNode, whose in-memory context a new run does not see); with
``device-state = disk`` and a reply that spends privacy (``dp``, ``telemetry``) in the device's
state (``clients/state_store.py``), so that a large simulation without DP does not keep a model
per device. A device whose state lives only in memory keeps nothing (its state does not
outlive the server either). One window stays open: a device that dies after saving its
privacy account and before keeping its reply trains that round again when asked.
Messages without ``round-offset`` (asynchronous rounds, whose dispatches may repeat a round
number) and an edge's SuperNode are passed through.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedmosaic import records
from fedmosaic.clients.device_state import device_state_file
from fedmosaic.clients.edge_forward import is_edge_node
from fedmosaic.clients.round import partition_id
from fedmosaic.clients.state_store import write_state
from fedmosaic.config import RunConfig

log = logging.getLogger("fedmosaic")
ROUND, MODEL, REPLY = "round", "model", "reply"


def model_digest(message: Message) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the message's global arrays."""
    digest = hashlib.sha256()
    arrays = message.content.array_records.get(records.ARRAYS)
    for name, array in sorted((arrays or {}).items()):
        digest.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def run_round(message: Message) -> int | None:
    """The round of the run a training message asks for, or ``None`` if it does not say."""
    config = message.content.config_records.get(records.CONFIG, {})
    if records.ROUND_OFFSET not in config or records.SERVER_ROUND not in config:
        return None
    return int(config[records.ROUND_OFFSET]) + int(config[records.SERVER_ROUND])


def _kept(context: Context, path: Path | None, asked: tuple[int, str]) -> RecordDict | None:
    """The kept reply if it answered ``asked`` (round of the run, model digest), else None."""
    if path is not None:
        if not path.is_file():
            return None
        meta = recorddict_from_proto(ProtoRecordDict.FromString(path.read_bytes())
                                     ).config_records[records.LAST_REPLY]
    else:
        meta = context.state.config_records.get(records.LAST_REPLY)
        if meta is None:
            return None
    if (int(meta[ROUND]), str(meta[MODEL])) != asked:
        return None
    return recorddict_from_proto(ProtoRecordDict.FromString(meta[REPLY]))


def _keep(context: Context, path: Path | None, answered: tuple[int, str],
          reply: RecordDict) -> None:
    meta = ConfigRecord({ROUND: answered[0], MODEL: answered[1],
                         REPLY: recorddict_to_proto(reply).SerializeToString()})
    if path is not None:
        write_state(path, RecordDict({records.LAST_REPLY: meta}))
    else:
        context.state[records.LAST_REPLY] = meta


def replay_repeated_rounds(message: Message, context: Context,
                           call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: answer a training round asked again with the reply already sent."""
    asked = run_round(message)
    if (message.metadata.message_type != MessageType.TRAIN or asked is None
            or is_edge_node(context)):
        return call_next(message, context)
    config = RunConfig.from_mapping(context.run_config)
    device = partition_id(context)
    path = device_state_file(config, context, device, "last-reply.pb")
    if path is None and not (config.device_state == "disk" and (config.dp or config.telemetry)):
        return call_next(message, context)
    token = message.content.config_records[records.CONFIG].get(records.RUN_TOKEN, "")
    key = (asked, f"{token}|{model_digest(message)}")
    kept = _kept(context, path, key)
    if kept is not None:
        log.warning("device %d: round %d of the run was asked again with the same model (the "
                    "server resumed); sending the reply already sent, without training or "
                    "spending again", device, asked)
        return Message(kept, reply_to=message)
    reply = call_next(message, context)
    if not reply.has_error():
        _keep(context, path, key, reply.content)
    return reply
