"""One training reply per round of the run: a round asked again is answered again, not retrained.

When the server stops during round ``r`` and the run is resumed from its checkpoint of round
``r - 1`` (``server/continuation.py``), devices that already trained round ``r`` are asked for
it again. Training again would spend privacy budget a second time for one round and release a
second DP output of the same data. Instead the ClientApp mod :func:`replay_repeated_rounds`
keeps each device's last training reply with the round of the run it answered (Flower's
``server-round`` plus ``round-offset``, both in the message's config), and when a training
message asks for that same round it sends the kept reply again, without training: re-sending
a release is post-processing and costs no privacy.

Where the reply is kept: with a node-config ``state-dir`` in ``<state-dir>/<run>/partition-
<id>-last-reply.pb`` (a SuperNode, whose in-memory context a new run does not see); with
``device-state = disk`` in the device's state (``clients/state_store.py``). A device whose
state lives only in memory keeps nothing (its state does not outlive the server either).
Messages without ``round-offset`` (asynchronous rounds, whose dispatches may repeat a round
number) and an edge's SuperNode are passed through.
"""

from __future__ import annotations

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
ROUND, REPLY = "round", "reply"


def run_round(message: Message) -> int | None:
    """The round of the run a training message asks for, or ``None`` if it does not say."""
    config = message.content.config_records.get(records.CONFIG, {})
    if records.ROUND_OFFSET not in config or records.SERVER_ROUND not in config:
        return None
    return int(config[records.ROUND_OFFSET]) + int(config[records.SERVER_ROUND])


def _kept(context: Context, path: Path | None) -> tuple[int, RecordDict] | None:
    if path is not None:
        if not path.is_file():
            return None
        kept = recorddict_from_proto(ProtoRecordDict.FromString(path.read_bytes()))
        meta = kept.config_records[records.LAST_REPLY]
        return int(meta[ROUND]), recorddict_from_proto(ProtoRecordDict.FromString(meta[REPLY]))
    meta = context.state.config_records.get(records.LAST_REPLY)
    if meta is None:
        return None
    return int(meta[ROUND]), recorddict_from_proto(ProtoRecordDict.FromString(meta[REPLY]))


def _keep(context: Context, path: Path | None, answered: int, reply: RecordDict) -> None:
    meta = ConfigRecord({ROUND: answered,
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
    if path is None and config.device_state != "disk":
        return call_next(message, context)
    kept = _kept(context, path)
    if kept is not None and kept[0] == asked:
        log.warning("device %d: round %d of the run was asked again (the server resumed); "
                    "sending the reply already sent, without training or spending again",
                    device, asked)
        return Message(kept[1], reply_to=message)
    reply = call_next(message, context)
    if not reply.has_error():
        _keep(context, path, asked, reply.content)
    return reply
