"""``fedmosaic deploy-local``: the app on Flower's deployment engine, all on 127.0.0.1.

Starts one ``flower-superlink`` and ``N`` ``flower-supernode`` processes (SuperNode ``i``
gets ``--node-config "partition-id=i num-partitions=N"``), submits the app with
``flwr run`` against that SuperLink, and stops every process when the run ends, fails or is
interrupted. Each role's command (``launch/flower_commands.py``) is exactly what a user runs
on real machines (README, "Deploying"); here they only share a host and use plain-text
gRPC/HTTP on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import tomli_w

from fedmosaic import PROJECT_DIR
from fedmosaic.config import ConfigValue
from fedmosaic.launch.edge_deployment import start_edge_tier
from fedmosaic.launch.flower_commands import (
    DEVICE_STATE_DIR,
    HOST,
    free_port,
    superlink_command,
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

FEDERATION = "fedmosaic-local"
def deploy_locally(overrides: dict[str, ConfigValue], supernodes: int, out: Path | None = None,
                   show_progress: bool = True, startup_timeout: float = 60.0,
                   edges: int = 0) -> dict[str, Any]:
    """Run the app through a loopback SuperLink and ``supernodes`` SuperNodes.

    With ``edges > 0`` the SuperNodes are devices below ``edges`` edge aggregators, each with
    its own SuperLink (``launch/edge_deployment.py``); the cloud SuperLink sees only the
    edges.
    """
    if supernodes < 1:
        raise ValueError(f"supernodes must be >= 1, got {supernodes}")
    if not 0 <= edges <= supernodes:
        raise ValueError(f"edges must lie in [0, supernodes={supernodes}], got {edges}")
    tier = {"num-edges": edges, "edge-role": "cloud"} if edges else {}
    config, run_dir = resolve_run({**overrides, "num-clients": supernodes, **tier}, out)
    logs = run_dir / "logs"
    env = flower_environment(run_dir)
    flwr_home = Path(env["FLWR_HOME"])
    flwr_home.mkdir(parents=True, exist_ok=True)
    link_port = free_port()
    (flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": FEDERATION,
        FEDERATION: {"address": f"{HOST}:{link_port}", "insecure": True},
    }}))
    if not config.resume_from:  # a new run: no device state from an earlier, unfinished one
        shutil.rmtree(run_dir / DEVICE_STATE_DIR, ignore_errors=True)
    run_config_file = run_dir / "run-config.toml"
    run_config_file.write_text(tomli_w.dumps(config.to_mapping()))

    with ProcessGroup(env=env) as group:
        link = group.start(superlink_command(link_port), logs / "superlink.log")
        wait_for_port(link_port, startup_timeout, lambda: link.poll() is None)
        edge_runs = []
        if edges:
            edge_runs = start_edge_tier(group, config, link_port, run_dir, flwr_home,
                                        startup_timeout)
        else:
            for partition_id in range(supernodes):
                group.start(supernode_command(link_port, free_port(), partition_id,
                                              supernodes, state_dir=run_dir / DEVICE_STATE_DIR),
                            logs / f"supernode-{partition_id}.log")
        submit = group.start(
            ["flwr", "run", str(PROJECT_DIR), FEDERATION, "--run-config",
             str(run_config_file), "--stream"],
            logs / "flwr-run.log",
        )

        died: list[subprocess.Popen[bytes]] = []

        def finished() -> int | None:
            for process in group.processes:
                if process is submit or process.poll() is None:
                    continue
                if process not in edge_runs or process.returncode != 0:
                    died.append(process)
                    return process.returncode or 1
            return submit.poll()

        code = follow(run_dir, config.num_server_rounds, finished, show_progress)
        if died:
            raise RunFailedError(f"the run stopped because a process of the federation ended: "
                                 f"{group.describe_exit(died[0])}")
    return read_summary(run_dir, logs / "flwr-run.log", code)
