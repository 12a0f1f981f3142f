"""Run the ServerApp and ClientApps in one process, one client at a time, without Ray.

``InProcessGrid`` is a Flower ``Grid`` whose ``send_and_receive`` hands each message to the
ClientApp directly, with one persistent ``Context`` per virtual node (so ``context.state``,
e.g. error-feedback residuals or a DP accountant, carries across rounds as it does on a
SuperNode). Each message is a fresh copy of what the strategy sent, round-tripped through
Flower's protobuf serialization, and a ClientApp that raises produces an error reply, as on
Flower's runtimes. The same ``ServerApp`` and ``ClientApp`` objects run here as under
``fedmosaic run``; only the transport differs.

It exists for benchmarks and tests that need many short runs: Ray's start-up (~15 s here)
dominates a small run, and sequential execution makes a run's timing easy to attribute.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients.state_store import resolved_device_state
from fedmosaic.config import ConfigValue, RunConfig, default_run_config

log = logging.getLogger("fedmosaic")

CLIENT_EXCEPTION = 1
"""Error code of the reply a ClientApp's exception turns into."""


class InProcessGrid(Grid):
    """A ``Grid`` that calls a ``ClientApp`` in this process for every message.

    Args:
        client_app: the ClientApp every virtual node runs.
        node_configs: one node config per virtual node (e.g. ``partition-id``).
        run_config: the run config every context sees.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: list[dict[str, ConfigValue]],
        run_config: dict[str, ConfigValue],
    ) -> None:
        self._client_app = client_app
        # Messages created in this process (by the ServerApp and the ClientApps) take their
        # run and task identity from here, as on a SuperLink.
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._run = Run.create_empty(run_id=1)
        self._run.override_config = dict(run_config)
        self.contexts: dict[int, Context] = {
            node_id: Context(run_id=1, node_id=node_id, node_config=dict(node_config),
                             state=RecordDict(), run_config=dict(run_config))
            for node_id, node_config in enumerate(node_configs, start=1)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Replace the run this grid serves."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """A message to ``dst_node_id`` (deprecated in Flower; kept for the abstract API)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The virtual nodes' IDs (1..N)."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now and keep the reply."""
        ids = []
        for message in messages:
            # stamped when handed over, as a SuperNode pulls its instruction: a reply's
            # created_at minus this is then the device's own round trip, not the wait for
            # the devices served before it
            message.metadata.__dict__["_created_at"] = time.time()
            delivered = self._deliver(message)
            # Flower's grids give the pushed message its id too: replies are matched by it
            message.metadata.__dict__["_message_id"] = delivered.metadata.message_id
            self._replies[delivered.metadata.message_id] = self._call_client(delivered)
            ids.append(delivered.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` (each is returned once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Deliver every message and return all replies (``timeout`` is not needed here)."""
        return list(self.pull_messages(list(self.push_messages(messages))))

    def _deliver(self, message: Message) -> Message:
        """A private copy of ``message`` with the metadata a SuperLink would set."""
        dst = message.metadata.dst_node_id
        if dst not in self.contexts:
            raise ValueError(f"message for node {dst}; this grid has nodes 1..{len(self.contexts)}")
        content = recorddict_from_proto(recorddict_to_proto(message.content))
        delivered = Message(content, dst, message.metadata.message_type,
                            ttl=message.metadata.ttl, group_id=message.metadata.group_id)
        meta = delivered.metadata.__dict__
        meta["_message_id"] = str(uuid.uuid4())
        meta["_run_id"] = self._run.run_id
        meta["_src_node_id"] = SUPERLINK_NODE_ID
        meta["_delivered_at"] = str(time.time())
        return delivered

    def _call_client(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self._client_app(message, context)
        except Exception as error:  # noqa: BLE001 - a failing client becomes an error reply
            log.warning("node %d failed: %s: %s", message.metadata.dst_node_id,
                        type(error).__name__, error)
            reply = Message(Error(CLIENT_EXCEPTION, f"{type(error).__name__}: {error}"),
                            reply_to=message)
        return reply


def run_in_process(overrides: dict[str, Any], server_app: ServerApp | None = None,
                   client_app: ClientApp | None = None) -> RunConfig:
    """Run one fedmosaic job sequentially in this process; returns the validated config.

    The run folder (history, summary, checkpoints) is written exactly as by ``fedmosaic run``.
    """
    from fedmosaic.clients.app import app as default_client_app
    from fedmosaic.server.app import app as default_server_app

    config = RunConfig.from_mapping(overrides)
    if not config.run_name:  # fixed now, so the server and the devices see one run folder
        config = RunConfig.from_mapping({**config.to_mapping(), "run-name": config.run_dir().name})
    run_config = resolved_device_state({**default_run_config(), **config.to_mapping()},
                                       shared_folder=True)
    node_configs: list[dict[str, ConfigValue]] = [
        {records.PARTITION_ID: i, records.NUM_PARTITIONS: config.num_clients}
        for i in range(config.num_clients)
    ]
    grid = InProcessGrid(client_app or default_client_app, node_configs, run_config)
    server_context = Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={},
                             state=RecordDict(), run_config=dict(run_config))
    (server_app or default_server_app)(grid, server_context)
    return config
