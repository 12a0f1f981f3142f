"""A run joins an existing two-node Ray cluster (``fedmosaic run --ray-address``).

The test starts the cluster itself with Ray's own CLI, ``ray start --head`` and then
``ray start --address`` for a second node with its own resources, each ``--block``-ing in a
``ProcessGroup`` of the test; it runs a short simulation on the cluster, reads from Ray's
global state which node each ClientApp actor was placed on, and stops exactly the processes
it started (the group's marker finds every one of them, and nothing else).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedmosaic.config import RayResources
from fedmosaic.launch.processes import ProcessGroup, processes_with_env
from fedmosaic.launch.runs import run_simulation

RAY = str(Path(sys.executable).parent / "ray")
ACTOR_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
actors = ray._private.state.actors().values()
alive = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
print(json.dumps({"nodes": alive, "actors": [a["Address"]["NodeID"] for a in actors
                                              if a["ActorClassName"] == "ClientAppActor"]}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_nodes(group: ProcessGroup, address: str, count: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in group.processes:
            if process.poll() is not None:
                raise RuntimeError(group.describe_exit(process))
        shown = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True,
                               text=True, check=False)
        if shown.returncode == 0 and shown.stdout.count("node_") >= count:
            return
        time.sleep(2)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes")


def test_a_run_places_its_devices_on_both_nodes_of_an_existing_ray_cluster(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    group = ProcessGroup(env={"RAY_USAGE_STATS_ENABLED": "0"})
    ray_dir = tempfile.mkdtemp(prefix="fm-ray-")  # Ray's socket paths must stay short
    try:
        group.start([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                     "--include-dashboard=false", f"--temp-dir={ray_dir}"],
                    tmp_path / "head.log")
        wait_for_nodes(group, address, 1)
        group.start([RAY, "start", "--block", f"--address={address}", "--num-cpus=1",
                     '--resources={"second-node": 1}'], tmp_path / "worker.log")
        wait_for_nodes(group, address, 2)

        summary = run_simulation(
            {"dataset": "synthetic", "num-clients": 4, "num-server-rounds": 1,
             "local-epochs": 1, "samples-per-client": 16, "fraction-evaluate": 0.0},
            out=tmp_path / "run", show_progress=False, resources=RayResources(address))

        placed = json.loads(subprocess.run(
            [sys.executable, "-c", ACTOR_NODES, address], capture_output=True, text=True,
            check=True, timeout=120).stdout.strip().splitlines()[-1])
    finally:
        group.stop()
        shutil.rmtree(ray_dir, ignore_errors=True)

    assert summary["rounds"] == 1 and summary["history"][0]["replies"] == 4
    # one CPU per node and one per ClientApp: the pool holds one actor on each node
    assert len(placed["nodes"]) == 2
    assert sorted(set(placed["actors"])) == sorted(placed["nodes"])
    assert processes_with_env(ProcessGroup.MARKER, group.token) == []


def test_bad_client_resources_are_refused():
    with pytest.raises(ValueError, match="client CPUs must be > 0, got 0"):
        RayResources(client_cpus=0)
    with pytest.raises(ValueError, match="client GPUs must be >= 0, got -1"):
        RayResources(client_gpus=-1)
