"""Run the app on Flower's Simulation Runtime (Ray backend) with a given run config.

This does in one process what ``flwr run`` does through a simulation SuperLink: it starts
the ServerApp in a thread and the ClientApps on a pool of Ray actors, one virtual SuperNode
per client, with ``partition-id``/``num-partitions`` in each node config. ``fedmosaic run``
launches it as a child process (``python -m fedmosaic.simulation.engine``) so that Ray and
every worker go away with it, also on Ctrl-C or failure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

from fedmosaic import PROJECT_DIR
from fedmosaic.config import ConfigValue, RunConfig, default_run_config

SERVERAPP = "fedmosaic.server.app:app"
CLIENTAPP = "fedmosaic.clients.app:app"


def backend_config(num_cpus: int | None = None) -> dict[str, dict[str, ConfigValue]]:
    """Ray settings: one CPU per ClientApp actor, so a 2-core machine runs two at a time."""
    cpus = num_cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False},
    }


def simulate(overrides: dict[str, ConfigValue], verbose: bool = False) -> RunConfig:
    """Run one fedmosaic simulation in this process; returns the validated config."""
    config = RunConfig.from_mapping(overrides)
    run_flower_app(
        app_dir=PROJECT_DIR,
        serverapp=SERVERAPP,
        clientapp=CLIENTAPP,
        run_config={**default_run_config(), **config.to_mapping()},
        num_supernodes=config.num_clients,
        verbose=verbose,
    )
    return config


def run_flower_app(
    app_dir: Path,
    serverapp: str,
    clientapp: str,
    run_config: dict[str, ConfigValue],
    num_supernodes: int,
    verbose: bool = False,
) -> None:
    """Run any Flower app (``module:attr`` components) on the Ray simulation runtime.

    ``run_config`` is the complete, flat run config both apps see in ``context.run_config``
    (what ``flwr run`` would fuse from ``pyproject.toml`` and ``--run-config``).
    """
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.override_config = dict(run_config)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id = run.primary_task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config))
    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
        client_app_attr=clientapp,
        server_app_attr=serverapp,
        backend_name="ray",
        backend_config=backend_config(),
        server_app_context=context,
        app_dir=str(app_dir),
        run=run,
        verbose_logging=verbose,
        is_app=True,
    )


def main() -> None:
    """Child-process entry: ``python -m fedmosaic.simulation.engine '<json overrides>'``."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    fedmosaic_log = logging.getLogger("fedmosaic")
    fedmosaic_log.addHandler(handler)
    fedmosaic_log.setLevel(logging.INFO)
    fedmosaic_log.propagate = False
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    simulate(overrides, verbose=os.environ.get("FEDMOSAIC_VERBOSE") == "1")


if __name__ == "__main__":
    main()
