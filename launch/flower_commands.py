"""The Flower processes a local deployment starts, as the commands a user runs on real machines.

Every role listens on loopback here (``HOST``); on real machines only the addresses change
(README, "Deploying" and "Edge tier"). With :class:`~fedmosaic.launch.credentials.Credentials`
a SuperLink serves TLS and admits only registered SuperNodes, and every SuperNode verifies the
SuperLink's certificate and signs its requests; without them every role runs ``--insecure``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmosaic import records
from fedmosaic.launch.credentials import CLOUD, Credentials, device_name, edge_name
from fedmosaic.launch.runs import RunFailedError

HOST = "127.0.0.1"
CLOUD_FEDERATION = "fedmosaic-local"
"""The cloud SuperLink's name in a loopback deployment's ``config.toml``."""
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


def superlink_command(port: int, credentials: Credentials | None = None,
                      name: str = CLOUD) -> list[str]:
    """SuperLink ``name``: Fleet, Control and ServerAppIo APIs on one loopback port.

    With ``credentials``: TLS with ``name``'s certificate and SuperNode authentication.
    """
    security = (["--insecure"] if credentials is None
                else [*credentials.superlink_tls_flags(name), "--enable-supernode-auth"])
    return ["flower-superlink", *security, "--host", HOST, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def superlink_settings(port: int, credentials: Credentials | None) -> dict[str, object]:
    """The ``config.toml`` entry through which ``flwr`` reaches the SuperLink on ``port``."""
    if credentials is None:
        return {"address": f"{HOST}:{port}", "insecure": True}
    return {"address": f"{HOST}:{port}", "root-certificates": str(credentials.ca_certificate)}


def register_supernodes(public_keys: Sequence[Path], federation: str,
                        env: Mapping[str, str], timeout: float = 120.0) -> None:
    """Register each public key with ``federation``'s SuperLink (``flwr supernode register``).

    The registrations run concurrently; any that fails raises :class:`RunFailedError` with
    what ``flwr`` printed.
    """
    commands = [["flwr", "supernode", "register", str(key), federation] for key in public_keys]
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env)) for command in commands]
    for command, process in zip(commands, running, strict=True):
        output, _ = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise RunFailedError(f"{' '.join(command)} exited with code {process.returncode}:\n"
                                 f"{output.decode(errors='replace')[-2000:]}")


def _supernode_security(credentials: Credentials | None, name: str) -> list[str]:
    return ["--insecure"] if credentials is None else credentials.supernode_flags(name)


def supernode_command(superlink_port: int, port: int, partition_id: int,
                      num_partitions: int, edge_id: int | None = None,
                      state_dir: Path | None = None,
                      credentials: Credentials | None = None) -> list[str]:
    """SuperNode ``partition_id``, serving its ClientApps on ``port`` (below ``edge_id``).

    With ``state_dir`` the device keeps its privacy account and personal parameters there;
    with ``credentials`` it verifies the SuperLink and authenticates as ``device-P``.
    """
    node_config = (f"{records.PARTITION_ID}={partition_id} "
                   f"{records.NUM_PARTITIONS}={num_partitions}")
    if edge_id is not None:
        node_config += f" {records.EDGE_ID}={edge_id}"
    if state_dir is not None:
        node_config += f' {records.STATE_DIR}="{state_dir}"'
    return ["flower-supernode", *_supernode_security(credentials, device_name(partition_id)),
            "--superlink", f"{HOST}:{superlink_port}",
            "--host", HOST, "--port", str(port), "--node-config", node_config]


def edge_supernode_command(cloud_port: int, port: int, edge_id: int, spool: Path,
                           credentials: Credentials | None = None) -> list[str]:
    """Edge ``edge_id``'s SuperNode in the cloud federation, handing rounds to ``spool``."""
    return ["flower-supernode", *_supernode_security(credentials, edge_name(edge_id)),
            "--superlink", f"{HOST}:{cloud_port}",
            "--host", HOST, "--port", str(port),
            "--node-config", f'{records.EDGE_ID}={edge_id} {records.EDGE_SPOOL}="{spool}"']
