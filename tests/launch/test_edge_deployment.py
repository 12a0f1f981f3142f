import json

import pytest

from fedmosaic.config import RunConfig
from fedmosaic.launch.deployment import deploy_locally
from fedmosaic.launch.edge_deployment import edge_run_config
from fedmosaic.launch.flower_commands import edge_supernode_command


def test_an_edge_supernode_names_its_edge_and_spool(tmp_path):
    command = edge_supernode_command(9000, 9100, 1, tmp_path / "spool")

    assert command[command.index("--superlink") + 1] == "127.0.0.1:9000"
    assert command[command.index("--node-config") + 1] == (
        f'edge-id=1 edge-spool="{tmp_path / "spool"}"')


def test_an_edge_run_is_the_cloud_run_with_the_edge_role():
    cloud = RunConfig.from_mapping({"num-clients": 4, "num-edges": 2, "edge-role": "cloud"})

    edge = edge_run_config(cloud, "/spool")

    assert edge == {**cloud.to_mapping(), "edge-role": "edge", "edge-spool": "/spool"}
    RunConfig.from_mapping(edge)  # valid as a run config


def test_edges_out_of_range_are_rejected_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match=r"edges must lie in \[0, supernodes=2\], got 3"):
        deploy_locally({}, supernodes=2, edges=3, out=tmp_path / "x", show_progress=False)


def test_two_edges_with_two_devices_each_complete_two_rounds(tmp_path, leftover_processes):
    run_dir = tmp_path / "edges"

    summary = deploy_locally({"num-server-rounds": 2, "local-epochs": 1}, supernodes=4,
                             edges=2, out=run_dir, show_progress=False)

    assert summary["rounds"] == 2
    assert summary["config"]["num-edges"] == 2
    for entry in summary["history"]:
        # the cloud received exactly one reply per edge, never a device's
        assert (entry["replies"], entry["failed_replies"]) == (2, 0)
        assert entry["bytes_device_to_edge"] > 0 and entry["bytes_edge_to_cloud"] > 0
        assert entry["edge_rejected_updates"] == 0
    for edge_id in (0, 1):
        spool = run_dir / "edges" / f"edge-{edge_id}" / "spool"
        assert sorted(p.name for p in (spool / "replies").iterdir()) == [
            "request-0001", "request-0002"]
        reply = json.loads((spool / "replies" / "request-0002" / "reply.json").read_text())
        assert reply["metrics"]["edge-accepted"] == 2
    assert leftover_processes(run_dir) == []


def test_deployed_edges_run_secure_aggregation_among_their_own_devices(tmp_path,
                                                                      leftover_processes):
    run_dir = tmp_path / "secure-edges"

    summary = deploy_locally({"num-server-rounds": 2, "local-epochs": 1,
                              "secure-aggregation": True}, supernodes=4, edges=2, out=run_dir,
                             show_progress=False)

    assert summary["rounds"] == 2
    for entry in summary["history"]:
        assert (entry["replies"], entry["failed_replies"]) == (2, 0)
        assert entry["edge_rejected_updates"] == 0
    for edge_id in (0, 1):
        spool = run_dir / "edges" / f"edge-{edge_id}" / "spool"
        reply = json.loads((spool / "replies" / "request-0002" / "reply.json").read_text())
        assert reply["metrics"]["edge-accepted"] == 2  # both devices' masked updates unmasked
    for device in range(4):  # every device took part in every stage of both rounds
        log = (run_dir / "logs" / f"edge-{device // 2}-device-{device}.log").read_text()
        for action in ("secagg_keys", "secagg_share", "secagg_unmask"):
            assert log.count(f"Receiving: query.{action} message") == 2
    assert summary["history"][-1]["accuracy"] > summary["initial_accuracy"]
    assert leftover_processes(run_dir) == []


def test_an_async_cloud_runs_over_two_deployed_edges(tmp_path, leftover_processes):
    run_dir = tmp_path / "async-edges"

    # one edge reply makes a version: the other edge, still training, replies one version late
    summary = deploy_locally({"num-server-rounds": 3, "local-epochs": 1, "mode": "async",
                              "concurrency": 2, "buffer-size": 1}, supernodes=4, edges=2,
                             out=run_dir, show_progress=False)

    assert summary["rounds"] == 3
    run = summary["async"]
    assert run["failures"] == 0 and run["stale_rejected"] == 0
    handled = sum(r["replies"] + r["failed_replies"] for r in summary["history"])
    assert run["dispatched"] == handled
    numbered = []
    for edge_id in (0, 1):
        spool = run_dir / "edges" / f"edge-{edge_id}" / "spool"
        names = sorted(p.name for p in (spool / "replies").iterdir())
        numbered += names
        for name in names:
            reply = json.loads((spool / "replies" / name / "reply.json").read_text())
            assert reply["metrics"]["edge-accepted"] == 2
    # every training message of the run has its number, and each went to one edge, which
    # answered it
    assert sorted(numbered) == [f"request-{n:04d}" for n in range(1, run["dispatched"] + 1)]
    assert leftover_processes(run_dir) == []
