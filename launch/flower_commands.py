"""The Flower processes a local deployment starts, as the commands a user runs on real machines.

Every role listens on loopback here (``HOST``); on real machines only the addresses change
(README, "Deploying" and "Edge tier").
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from fedmosaic import records
from fedmosaic.launch.runs import RunFailedError

HOST = "127.0.0.1"
DEVICE_STATE_DIR = records.DEVICE_STATE_FOLDER
"""Folder of a loopback deployment's run folder where its devices keep their state."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, alive: Any) -> None:
    """Block until something accepts on ``HOST:port``; fail early if ``alive()`` is False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RunFailedError(f"process serving port {port} exited during start-up")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise RunFailedError(f"nothing accepted connections on {HOST}:{port} within {timeout:.0f} s")


def superlink_command(port: int) -> list[str]:
    """The SuperLink: Fleet, Control and ServerAppIo APIs on one loopback port."""
    return ["flower-superlink", "--insecure", "--host", HOST, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def supernode_command(superlink_port: int, port: int, partition_id: int,
                      num_partitions: int, edge_id: int | None = None,
                      state_dir: Path | None = None) -> list[str]:
    """SuperNode ``partition_id``, serving its ClientApps on ``port`` (below ``edge_id``).

    With ``state_dir`` the device keeps its privacy account and personal parameters there.
    """
    node_config = (f"{records.PARTITION_ID}={partition_id} "
                   f"{records.NUM_PARTITIONS}={num_partitions}")
    if edge_id is not None:
        node_config += f" {records.EDGE_ID}={edge_id}"
    if state_dir is not None:
        node_config += f' {records.STATE_DIR}="{state_dir}"'
    return ["flower-supernode", "--insecure", "--superlink", f"{HOST}:{superlink_port}",
            "--host", HOST, "--port", str(port), "--node-config", node_config]


def edge_supernode_command(cloud_port: int, port: int, edge_id: int, spool: Path) -> list[str]:
    """Edge ``edge_id``'s SuperNode in the cloud federation, handing rounds to ``spool``."""
    return ["flower-supernode", "--insecure", "--superlink", f"{HOST}:{cloud_port}",
            "--host", HOST, "--port", str(port),
            "--node-config", f'{records.EDGE_ID}={edge_id} {records.EDGE_SPOOL}="{spool}"']
