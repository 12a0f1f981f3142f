"""``fedmosaic deploy-local``: the app on Flower's deployment engine, all on 127.0.0.1.

Starts one ``flower-superlink`` and ``N`` ``flower-supernode`` processes (SuperNode ``i``
gets ``--node-config "partition-id=i num-partitions=N"``), submits the app with
``flwr run`` against that SuperLink, and stops every process when the run ends, fails or is
interrupted. Each role's command (``launch/flower_commands.py``) is exactly what a user runs
on real machines (README, "Deploying"); here they only share a host.

Secure by default: every SuperLink serves TLS and admits only registered SuperNodes, with
credentials made for the run in ``RUN/credentials`` (``launch/credentials.py``) or taken from
a folder ``fedmosaic credentials`` made; ``insecure=True`` runs plain-text gRPC/HTTP instead.

A run whose server stopped (a killed SuperLink fails Flower's run, even with ``--database``)
goes on with :func:`resume_locally` (``fedmosaic deploy-local --resume RUN``): the same
config, folder, credentials and device state, from the last checkpoint
(``server/continuation.py``, ``clients/replay.py``).

A device SuperNode that ends does not end the run: the federation goes on without it
(``round-timeout``, ``node-wait``) and the summary names it under ``lost_supernodes``. A
SuperLink, an edge's SuperNode or the submitting ``flwr run`` that ends does end it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import tomli_w

from fedmosaic import PROJECT_DIR
from fedmosaic.config import ConfigValue, tomllib
from fedmosaic.launch.credentials import (
    CLOUD,
    Credentials,
    create_credentials,
    device_name,
    edge_name,
)
from fedmosaic.launch.edge_deployment import EdgeTier, start_edge_tier
from fedmosaic.launch.flower_commands import (
    CLOUD_FEDERATION,
    DEVICE_STATE_DIR,
    free_port,
    register_supernodes,
    superlink_command,
    superlink_settings,
    supernode_command,
    wait_for_port,
)
from fedmosaic.launch.processes import ProcessGroup
from fedmosaic.launch.runs import (
    RunFailedError,
    flower_environment,
    follow,
    read_summary,
    resolve_run,
)

log = logging.getLogger("fedmosaic")


def deployment_credentials(run_dir: Path, supernodes: int, edges: int,
                           folder: Path | None) -> Credentials:
    """``folder``'s credentials, checked to cover this deployment, or new ones in the run."""
    if folder is None:
        return create_credentials(run_dir / "credentials", devices=supernodes, edges=edges)
    credentials = Credentials(Path(folder).expanduser().resolve())
    credentials.check(superlinks=[CLOUD, *(edge_name(e) for e in range(edges))],
                      supernodes=[*(device_name(p) for p in range(supernodes)),
                                  *(edge_name(e) for e in range(edges))])
    return credentials


def deploy_locally(overrides: dict[str, ConfigValue], supernodes: int, out: Path | None = None,
                   show_progress: bool = True, startup_timeout: float = 60.0,
                   edges: int = 0, insecure: bool = False,
                   credentials: Path | None = None) -> dict[str, Any]:
    """Run the app through a loopback SuperLink and ``supernodes`` SuperNodes.

    With ``edges > 0`` the SuperNodes are devices below ``edges`` edge aggregators, each with
    its own SuperLink (``launch/edge_deployment.py``); the cloud SuperLink sees only the
    edges. ``insecure`` drops TLS and node authentication; ``credentials`` is a folder made by
    ``fedmosaic credentials`` (default: new credentials in ``RUN/credentials``).

    Returns:
        The run's summary, with ``lost_supernodes``: how each device SuperNode that ended
        during the run ended.
    """
    if supernodes < 1:
        raise ValueError(f"supernodes must be >= 1, got {supernodes}")
    if not 0 <= edges <= supernodes:
        raise ValueError(f"edges must lie in [0, supernodes={supernodes}], got {edges}")
    if insecure and credentials is not None:
        raise ValueError("insecure=True runs without TLS: it takes no credentials folder")
    tier = {"num-edges": edges, "edge-role": "cloud"} if edges else {}
    config, run_dir = resolve_run({**overrides, "num-clients": supernodes, **tier}, out)
    logs = run_dir / "logs"
    env = flower_environment(run_dir)
    flwr_home = Path(env["FLWR_HOME"])
    flwr_home.mkdir(parents=True, exist_ok=True)
    secrets = None if insecure else deployment_credentials(run_dir, supernodes, edges,
                                                           credentials)
    link_port = free_port()
    (flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": CLOUD_FEDERATION, CLOUD_FEDERATION: superlink_settings(link_port, secrets),
    }}))
    if not config.resume_from:  # a new run: no device state from an earlier, unfinished one
        shutil.rmtree(run_dir / DEVICE_STATE_DIR, ignore_errors=True)
    run_config_file = run_dir / "run-config.toml"
    run_config_file.write_text(tomli_w.dumps(config.to_mapping()))

    with ProcessGroup(env=env) as group:
        link = group.start(superlink_command(link_port, secrets), logs / "superlink.log")
        wait_for_port(link_port, startup_timeout, lambda: link.poll() is None)
        edge_tier = EdgeTier()
        if edges:
            edge_tier = start_edge_tier(group, config, link_port, run_dir, flwr_home,
                                        startup_timeout, secrets)
        else:
            if secrets is not None:
                register_supernodes([secrets.supernode(device_name(p))[1]
                                     for p in range(supernodes)], CLOUD_FEDERATION, group.env)
            for partition_id in range(supernodes):
                edge_tier.devices.append(group.start(
                    supernode_command(link_port, free_port(), partition_id, supernodes,
                                      state_dir=run_dir / DEVICE_STATE_DIR,
                                      credentials=secrets),
                    logs / f"supernode-{partition_id}.log"))
        submit = group.start(
            ["flwr", "run", str(PROJECT_DIR), CLOUD_FEDERATION, "--run-config",
             str(run_config_file), "--stream"],
            logs / "flwr-run.log",
        )

        died: list[subprocess.Popen[bytes]] = []
        lost: dict[int, str] = {}

        def finished() -> int | None:
            for process in group.processes:
                if process is submit or process.poll() is None or process.pid in lost:
                    continue
                if process in edge_tier.devices:  # node loss: the rounds go on without it
                    lost[process.pid] = group.describe_exit(process, tail_lines=5)
                    log.warning("a device SuperNode ended; the run goes on without it: %s",
                                lost[process.pid])
                    continue
                if process not in edge_tier.runs or process.returncode != 0:
                    died.append(process)
                    return process.returncode or 1
            return submit.poll()

        code = follow(run_dir, config.num_server_rounds, finished, show_progress)
        if died:
            raise RunFailedError(f"the run stopped because a process of the federation ended: "
                                 f"{group.describe_exit(died[0])}")
    return {**read_summary(run_dir, logs / "flwr-run.log", code),
            "lost_supernodes": list(lost.values())}


def resume_locally(run_dir: Path, overrides: dict[str, ConfigValue] | None = None,
                   show_progress: bool = True, startup_timeout: float = 60.0,
                   insecure: bool = False) -> dict[str, Any]:
    """Continue a stopped ``deploy-local`` run in ``run_dir`` from its last checkpoint.

    The run's saved config (``run-config.toml``), its devices and edges, its credentials and
    its devices' state are reused; ``overrides`` apply on top (e.g. more rounds).

    Raises:
        ValueError: If ``run_dir`` holds no saved config or no checkpoint, or a finished run.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    saved_file = run_dir / "run-config.toml"
    if not saved_file.is_file():
        raise ValueError(f"--resume expects a deploy-local run folder with run-config.toml, "
                         f"got {run_dir}")
    if (run_dir / "summary.json").exists():
        raise ValueError(f"{run_dir} holds a finished run: nothing to resume")
    checkpoints = sorted((run_dir / "checkpoints").glob("round-*.pt"),
                         key=lambda path: int(path.stem.removeprefix("round-")))
    if not checkpoints:
        raise ValueError(f"{run_dir} has no checkpoint (the run stopped before its first round "
                         f"ended): start it again instead of resuming")
    saved = tomllib.loads(saved_file.read_text())
    folder = run_dir / "credentials"
    return deploy_locally(
        {**saved, **(overrides or {}), "resume-from": str(checkpoints[-1])},
        supernodes=int(saved["num-clients"]), out=run_dir, show_progress=show_progress,
        startup_timeout=startup_timeout, edges=int(saved.get("num-edges", 0)),
        insecure=insecure,
        credentials=folder if folder.is_dir() and not insecure else None)
