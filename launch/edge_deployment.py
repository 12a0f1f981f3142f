"""``fedmosaic deploy-local --edges E``: the edge tier from Flower's own processes, on loopback.

The tree (``N`` devices, ``E`` edges; all on 127.0.0.1 here, one machine per role in a real
deployment, see README "Edge tier")::

    cloud      flower-superlink :Pc  <-  flwr run  (edge-role=cloud, num-edges=E)
                 ^ (E edge SuperNodes only)
    edge e     flower-supernode (edge-id=e edge-spool=DIR)
                 | spool DIR (local hand-off)
               flower-superlink :Pe  <-  flwr run  (edge-role=edge, edge-spool=DIR)
                 ^
    devices    flower-supernode (partition-id=p edge-id=e), for each p with edge e

The cloud SuperLink only ever sees the E edge SuperNodes; every device SuperNode talks to its
edge's SuperLink. On each edge machine, the cloud run's ClientApp (on the edge SuperNode) and
the edge run's ServerApp (on the edge SuperLink) meet in the spool directory
(``compression/spool.py``). Device ``p`` belongs to edge ``floor(p E / N)``
(``compression/topology.py``), which is also how many devices each edge waits for.

With credentials every SuperLink serves TLS with its own certificate (``edge-E``) and admits
only registered SuperNodes: the edge's devices are registered with the edge's SuperLink, the
edge's own SuperNode with the cloud's.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedmosaic import PROJECT_DIR, records
from fedmosaic.compression.topology import edge_of
from fedmosaic.config import RunConfig, tomllib
from fedmosaic.launch.credentials import Credentials, device_name, edge_name
from fedmosaic.launch.flower_commands import (
    CLOUD_FEDERATION,
    DEVICE_STATE_DIR,
    edge_supernode_command,
    free_port,
    register_supernodes,
    superlink_command,
    superlink_settings,
    supernode_command,
    wait_for_port,
)
from fedmosaic.launch.processes import ProcessGroup


def edge_federation(edge_id: int) -> str:
    """Name of edge ``edge_id``'s SuperLink in the launcher's ``config.toml``."""
    return f"fedmosaic-edge-{edge_id}"


def edge_run_config(config: RunConfig, spool: Path) -> dict[str, object]:
    """The run config of an edge's sub-round run: the cloud's, with the edge role and spool."""
    return {**config.to_mapping(), "edge-role": "edge", records.EDGE_SPOOL: str(spool)}


@dataclass
class EdgeTier:
    """The processes of the started edges."""

    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """Each edge run's ``flwr run --stream`` (it exits when its edge run ends)."""
    devices: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """The devices' SuperNodes, below every edge."""


def start_edge_tier(group: ProcessGroup, config: RunConfig, cloud_port: int, run_dir: Path,
                    flwr_home: Path, startup_timeout: float,
                    credentials: Credentials | None = None) -> EdgeTier:
    """Start every edge's SuperLink, devices and SuperNode, and submit every edge run.

    Each edge's SuperLink is added to ``flwr_home/config.toml`` as :func:`edge_federation`;
    logs go to ``run_dir/logs/edge-E-*.log``, spools to ``run_dir/edges/edge-E/spool``.
    With ``credentials``, keys are registered before their SuperNodes start.
    """
    logs = run_dir / "logs"
    settings_file = flwr_home / "config.toml"
    settings = tomllib.loads(settings_file.read_text())
    tier = EdgeTier()
    for edge_id in range(config.num_edges):
        port = free_port()
        link = group.start(superlink_command(port, credentials, edge_name(edge_id)),
                           logs / f"edge-{edge_id}-superlink.log")
        wait_for_port(port, startup_timeout, lambda link=link: link.poll() is None)
        settings["superlink"][edge_federation(edge_id)] = superlink_settings(port, credentials)
        settings_file.write_text(tomli_w.dumps(settings))
        devices = [p for p in range(config.num_clients)
                   if edge_of(p, config.num_clients, config.num_edges) == edge_id]
        if credentials is not None:
            register_supernodes([credentials.supernode(device_name(p))[1] for p in devices],
                                edge_federation(edge_id), group.env)
            register_supernodes([credentials.supernode(edge_name(edge_id))[1]],
                                CLOUD_FEDERATION, group.env)
        for partition_id in devices:
            command = supernode_command(port, free_port(), partition_id, config.num_clients,
                                        edge_id, state_dir=run_dir / DEVICE_STATE_DIR,
                                        credentials=credentials)
            tier.devices.append(group.start(command,
                                            logs / f"edge-{edge_id}-device-{partition_id}.log"))
        spool = run_dir / "edges" / f"edge-{edge_id}" / "spool"
        shutil.rmtree(spool, ignore_errors=True)  # a resumed run numbers its rounds from 1 again
        spool.mkdir(parents=True)
        group.start(edge_supernode_command(cloud_port, free_port(), edge_id, spool, credentials),
                    logs / f"edge-{edge_id}-supernode.log")
        run_config_file = run_dir / f"edge-{edge_id}-run-config.toml"
        run_config_file.write_text(tomli_w.dumps(edge_run_config(config, spool)))
        tier.runs.append(group.start(
            ["flwr", "run", str(PROJECT_DIR), edge_federation(edge_id), "--run-config",
             str(run_config_file), "--stream"],
            logs / f"edge-{edge_id}-flwr-run.log",
        ))
    return tier
