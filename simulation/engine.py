"""Run the app on Flower's Simulation Runtime (Ray backend) with a given run config.

This does in one process what ``flwr run`` does through a simulation SuperLink: it starts
the ServerApp in a thread and the ClientApps on a pool of Ray actors, one virtual SuperNode
per client, with ``partition-id``/``num-partitions`` in each node config. ``fedmosaic run``
launches it as a child process (``python -m fedmosaic.simulation.engine``) so that Ray and
every worker go away with it, also on Ctrl-C or failure.

By default Ray is private to the run (``ray.init`` with this machine's CPUs). With
:attr:`RayResources.address` the run joins an existing Ray cluster instead (``ray start
--head`` on one machine, ``ray start --address`` on the others): Flower's Ray backend sizes its
actor pool from every node's CPUs and GPUs (one actor per ``client_cpus``/``client_gpus``)
and Ray places the ClientApp actors on any node; the cluster stays up after the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
from fedmosaic.clients.state_store import resolved_device_state
from fedmosaic.config import ConfigValue, RayResources, RunConfig, default_run_config

SERVERAPP = "fedmosaic.server.app:app"
CLIENTAPP = "fedmosaic.clients.app:app"


def backend_config(resources: RayResources | None = None,
                   num_cpus: int | None = None) -> dict[str, dict[str, ConfigValue]]:
    """Flower's Ray backend settings.

    A private Ray gets this machine's CPUs (or ``num_cpus``), so with one CPU per ClientApp
    a 2-core machine runs two at a time; a joined cluster brings its own (Ray refuses
    ``num_cpus`` when connecting to one).
    """
    resources = resources or RayResources()
    client: dict[str, ConfigValue] = {"num_cpus": resources.client_cpus,
                                      "num_gpus": resources.client_gpus}
    if resources.address:
        return {"client_resources": client, "init_args": {"address": resources.address}}
    return {"client_resources": client,
            "init_args": {"num_cpus": num_cpus or os.cpu_count() or 1,
                          "include_dashboard": False}}


def simulate(overrides: dict[str, ConfigValue], verbose: bool = False,
             resources: RayResources | None = None) -> RunConfig:
    """Run one fedmosaic simulation in this process; returns the validated config."""
    config = RunConfig.from_mapping(overrides)
    run_flower_app(
        app_dir=PROJECT_DIR,
        serverapp=SERVERAPP,
        clientapp=CLIENTAPP,
        run_config=resolved_device_state(
            {**default_run_config(), **config.to_mapping()},
            shared_folder=not (resources and resources.address)),
        num_supernodes=config.num_clients,
        verbose=verbose,
        resources=resources,
    )
    return config


def run_flower_app(
    app_dir: Path,
    serverapp: str,
    clientapp: str,
    run_config: dict[str, ConfigValue],
    num_supernodes: int,
    verbose: bool = False,
    resources: RayResources | None = None,
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
        backend_config=backend_config(resources),
        server_app_context=context,
        app_dir=str(app_dir),
        run=run,
        verbose_logging=verbose,
        is_app=True,
    )


def main() -> None:
    """Child-process entry of ``fedmosaic run``.

    ``python -m fedmosaic.simulation.engine '<json overrides>' [--resources '<json>']``, the
    second a :class:`~fedmosaic.config.RayResources` as a JSON object.
    """
    parser = argparse.ArgumentParser(prog="python -m fedmosaic.simulation.engine")
    parser.add_argument("overrides", nargs="?", default="{}")
    parser.add_argument("--resources", default="{}")
    args = parser.parse_args()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    fedmosaic_log = logging.getLogger("fedmosaic")
    fedmosaic_log.addHandler(handler)
    fedmosaic_log.setLevel(logging.INFO)
    fedmosaic_log.propagate = False
    simulate(json.loads(args.overrides), verbose=os.environ.get("FEDMOSAIC_VERBOSE") == "1",
             resources=RayResources(**json.loads(args.resources)))


if __name__ == "__main__":
    main()
