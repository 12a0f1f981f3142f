"""A device's state on disk between its rounds, so that memory follows the sample.

Everything a device keeps between rounds lives in its ``context.state``: its privacy account,
its error-feedback residual (a model-sized array under top-k compression), its personal
parameters, its telemetry ledger, its pseudonym key. Flower's simulation keeps one
``Context`` per virtual device for the whole run, so with N devices that state would grow with
N, however few are sampled a round.

With ``device-state = disk`` the ClientApp's mod :func:`keep_state_on_disk` reads the device's
state from ``<out-dir>/<run>/device-state/partition-<id>.state`` when a message for it
arrives, and when the device has replied writes it back (Flower's ``RecordDict`` protobuf, to
a temporary file renamed over the old one, so a crash leaves the last complete state) and
empties ``context.state``. In memory there is then one empty ``Context`` per device (about
1 kB, Flower's) plus the state of the devices in this round; on disk one file per device that
ever kept something. ``auto`` is ``disk`` where the launcher knows that devices share the run
folder (``fedmosaic run`` on a private Ray, in-process runs; :func:`resolved_device_state`)
and ``memory`` under a SuperNode.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedmosaic import records
from fedmosaic.clients.round import partition_id
from fedmosaic.config import ConfigValue, RunConfig


def resolved_device_state(run_config: dict[str, ConfigValue],
                          shared_folder: bool) -> dict[str, ConfigValue]:
    """``run_config`` with ``device-state = auto`` resolved.

    ``disk`` if every device process sees the run folder (``shared_folder``), else ``memory``.
    """
    if run_config.get("device-state", "auto") != "auto":
        return run_config
    return {**run_config, "device-state": "disk" if shared_folder else "memory"}


def state_file(config: RunConfig, context: Context, partition: int) -> Path:
    """``<out-dir>/<run>/device-state/partition-<id>.state``.

    ``<run>`` is the run name, or ``run-<run id>`` without one.
    """
    run_key = config.run_name or f"run-{context.run_id}"
    return (Path(config.out_dir).expanduser().resolve() / run_key / records.DEVICE_STATE_FOLDER
            / f"partition-{partition}.state")


def read_state(path: Path) -> RecordDict:
    """The state stored at ``path`` (empty if there is none yet)."""
    if not path.is_file():
        return RecordDict()
    return recorddict_from_proto(ProtoRecordDict.FromString(path.read_bytes()))


def write_state(path: Path, state: RecordDict) -> None:
    """Store ``state`` at ``path`` atomically (a temporary file renamed over the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    partial.write_bytes(recorddict_to_proto(state).SerializeToString())
    os.replace(partial, path)


def keep_state_on_disk(message: Message, context: Context,
                       call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: with ``device-state = disk`` the state lives in the device's file.

    It is read for the length of one message and written back afterwards (module docstring).
    """
    config = RunConfig.from_mapping(context.run_config)
    if config.device_state != "disk":
        return call_next(message, context)
    path = state_file(config, context, partition_id(context))
    if not len(context.state):
        context.state = read_state(path)
    try:
        return call_next(message, context)
    finally:  # also after a failed round: whatever the device already spent stays recorded
        if len(context.state):
            write_state(path, context.state)
        else:  # the device dropped its state: an old file must not come back
            path.unlink(missing_ok=True)
        context.state = RecordDict()
