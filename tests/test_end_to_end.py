"""Tiny runs of each entry point: the CLI on Ray, a synthetic run, a loopback deployment."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedmosaic.clients.replay import ROUND
from fedmosaic.clients.state_store import read_state
from fedmosaic.launch.deployment import deploy_locally, resume_locally
from fedmosaic.launch.runs import RunFailedError, run_simulation
from fedmosaic.simulation.inprocess import run_in_process

QUICK = ["-c", "num-server-rounds=2", "-c", "local-epochs=1"]


def assert_complete_run(run_dir, rounds):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == rounds
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert [h["round"] for h in summary["history"]] == list(range(1, rounds + 1))
    for entry in summary["history"]:
        assert entry["bytes_up"] > 0 and entry["bytes_down"] > 0 and entry["seconds"] > 0
        assert 0.0 <= entry["accuracy"] <= 1.0 and entry["loss"] > 0
    assert summary["config"]["num-server-rounds"] == rounds
    assert (run_dir / "summary.png").stat().st_size > 0
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / f"round-{rounds:03d}.pt").exists()
    return summary


def test_cli_run_simulates_two_rounds_on_ray_and_cleans_up(tmp_path, leftover_processes):
    run_dir = tmp_path / "sim"

    result = subprocess.run(
        [sys.executable, "-m", "fedmosaic.cli", "run", "-q", *QUICK, "--out", str(run_dir)],
        capture_output=True, text=True, timeout=600,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "final accuracy" in result.stdout
    summary = assert_complete_run(run_dir, rounds=2)
    # 10 smartwatch clients all train every round (fraction-train = 1.0)
    assert all(h["replies"] >= 10 for h in summary["history"])
    assert leftover_processes(run_dir) == []


def test_synthetic_four_modalities_with_missing_modalities(tmp_path, leftover_processes):
    run_dir = tmp_path / "synthetic"

    # with the anonymizer trained on Ray (site is the protected attribute) and applied
    summary = run_simulation(
        {"dataset": "synthetic", "num-clients": 12, "num-server-rounds": 1, "local-epochs": 1,
         "fraction-train": 0.5, "fraction-evaluate": 0.25, "missing-modality-prob": 0.5,
         "anonymizer-rounds": 1, "anonymizer-steps": 1, "anonymize-training": True},
        out=run_dir, show_progress=False,
    )

    assert summary["rounds"] == 1
    assert summary["history"][0]["replies"] >= 6 + 3
    assert [entry["replies"] for entry in summary["anonymizer"]] == [6]
    assert leftover_processes(run_dir) == []


def test_deploy_local_runs_two_rounds_through_superlink_and_supernodes(
        tmp_path, leftover_processes):
    run_dir = tmp_path / "deploy"

    # personalized (FedRep): each device keeps its head in its state directory
    summary = deploy_locally({"num-server-rounds": 2, "local-epochs": 1,
                              "personalization": "fedrep", "fraction-evaluate": 1.0},
                             supernodes=2, out=run_dir, show_progress=False)

    assert_complete_run(run_dir, rounds=2)
    assert summary["config"]["num-clients"] == 2
    assert all(h["replies"] >= 2 for h in summary["history"])
    assert 0.0 <= summary["final_device_accuracy"] <= 1.0
    kept = sorted(p.name for p in (run_dir / "device-state").rglob("*-personal.pt"))
    assert kept == ["partition-0-personal.pt", "partition-1-personal.pt"]
    for log in ("superlink.log", "supernode-0.log", "supernode-1.log", "flwr-run.log"):
        assert (run_dir / "logs" / log).exists()
    assert leftover_processes(run_dir) == []


def test_secure_aggregation_runs_through_a_loopback_deployment(tmp_path, leftover_processes):
    run_dir = tmp_path / "secure"

    summary = deploy_locally({"num-server-rounds": 2, "local-epochs": 1, "fraction-evaluate": 0.0,
                              "secure-aggregation": True},
                             supernodes=3, out=run_dir, show_progress=False)

    assert_complete_run(run_dir, rounds=2)
    for entry in summary["history"]:
        protocol = entry["secure_aggregation"]
        assert protocol["cohort"] == 3 and not any(protocol["dropped"].values())
        assert protocol["bytes_up"] > 0 and entry["rejected"] == 0
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.1  # the masks cancelled
    assert leftover_processes(run_dir) == []


def test_a_finished_run_folder_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")

    with pytest.raises(FileExistsError, match="already holds a finished run"):
        run_simulation({}, out=run_dir, show_progress=False)


def test_cli_rejects_unknown_keys_before_starting_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fedmosaic.cli", "run", "-c", "num-rounds=3", "--out",
         str(tmp_path / "x")], capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 2
    assert "unknown run-config key" in result.stdout
    assert not (tmp_path / "x").exists()


def test_a_rogue_device_in_a_loopback_deployment_is_rejected_and_the_run_completes(
        tmp_path, leftover_processes):
    run_dir = tmp_path / "rogue"

    # 3 SuperNodes, round(0.34 * 3) = 1 sends malformed replies over the wire every round
    summary = deploy_locally({"num-server-rounds": 2, "local-epochs": 1, "attack": "malformed",
                              "malicious-fraction": 0.34, "fraction-evaluate": 0.0},
                             supernodes=3, out=run_dir, show_progress=False)

    assert_complete_run(run_dir, rounds=2)
    for entry in summary["history"]:
        assert entry["replies"] == 3 and entry["rejected"] == 1
        assert entry["rejected_reasons"] == {"metrics": 1}
    assert summary["final_accuracy"] != summary["initial_accuracy"]  # the honest two trained
    assert leftover_processes(run_dir) == []


def test_async_rounds_run_through_a_loopback_deployment(tmp_path, leftover_processes):
    run_dir = tmp_path / "async"

    summary = deploy_locally({"num-server-rounds": 2, "local-epochs": 1, "fraction-evaluate": 0.0,
                              "window-seconds": 0.5, "mode": "async", "concurrency": 2,
                              "buffer-size": 1}, supernodes=3, out=run_dir, show_progress=False)

    assert_complete_run(run_dir, rounds=2)
    assert all(entry["replies"] >= 1 for entry in summary["history"])
    assert summary["async"]["dispatched"] >= 2
    assert leftover_processes(run_dir) == []


def _history(run_dir):
    path = run_dir / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def test_a_third_of_the_supernodes_killed_mid_run_and_the_run_completes(
        tmp_path, leftover_processes):
    run_dir = tmp_path / "lost"
    outcome = {}

    def deploy():
        try:
            outcome["summary"] = deploy_locally(
                {"num-server-rounds": 3, "local-epochs": 1, "fraction-evaluate": 0.0,
                 "dataset": "synthetic", "samples-per-client": 32, "round-timeout": 120.0,
                 "node-wait": 30.0},
                supernodes=10, out=run_dir, show_progress=False)
        except RunFailedError as error:
            outcome["error"] = str(error)

    def wait_for_round(number):
        deadline = time.monotonic() + 400
        while len(_history(run_dir)) < number:
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.5)

    thread = threading.Thread(target=deploy)
    thread.start()
    wait_for_round(1)  # round 2 is being sent now: kill 3 of 10 devices mid-round
    supernodes = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                  for pid in leftover_processes(run_dir)
                  if b"flower-supernode" in Path(f"/proc/{pid}/cmdline").read_bytes()}
    victims = sorted(supernodes)[:3]
    comeback_command = [a for a in supernodes[victims[0]] if a]
    comeback_env = dict(line.split(b"=", 1) for line in
                        Path(f"/proc/{victims[0]}/environ").read_bytes().split(b"\0") if line)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for_round(2)
    # one device comes back with the same key (the same node id under node authentication);
    # it inherits the deployment's process-group marker, so the deployment stops it at the end
    subprocess.Popen(comeback_command, env=comeback_env, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    thread.join(timeout=600)

    assert "error" not in outcome, outcome["error"]
    summary = outcome["summary"]
    history = summary["history"]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert history[0]["replies"] == 10 and history[0]["failed_replies"] == 0
    assert history[1]["failed_replies"] >= 3  # the dead nodes' error replies or timeouts
    assert history[1]["replies"] == 7 and all(h["rejected"] == 0 for h in history)
    assert history[2]["replies"] == 8  # the device that came back trains again
    assert len(summary["lost_supernodes"]) == 3
    assert all("was killed by SIGKILL" in lost for lost in summary["lost_supernodes"])
    assert leftover_processes(run_dir) == []


def test_the_server_killed_in_round_3_resumes_to_the_end_with_an_uninterrupted_ledger(
        tmp_path, leftover_processes):
    run_dir = tmp_path / "restarted"
    overrides = {"num-server-rounds": 4, "local-epochs": 1, "fraction-evaluate": 0.0,
                 "dp": True, "dp-epsilon-budget": 50.0, "risk-perception": False}
    outcome = {}

    def deploy():
        try:
            deploy_locally(overrides, supernodes=2, out=run_dir, show_progress=False)
        except RunFailedError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=deploy)
    thread.start()
    replies = [run_dir / "device-state" / "restarted" / f"partition-{p}-last-reply.pb"
               for p in (0, 1)]
    deadline = time.monotonic() + 400
    # both devices have trained round 3 and sent their replies: now the server dies
    while not all(path.is_file() and read_state(path)["last-reply"][ROUND] == 3
                  for path in replies):
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.2)
    superlink = next(pid for pid in leftover_processes(run_dir)
                     if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(superlink, signal.SIGKILL)
    saved_round_3 = (run_dir / "checkpoints" / "round-003.pt").exists()  # almost never: racy
    thread.join(timeout=300)
    assert "flower-superlink" in outcome["error"]

    summary = resume_locally(run_dir, show_progress=False)
    straight = json.loads((run_in_process({**overrides, "num-clients": 2, "out-dir": str(
        tmp_path), "run-name": "straight"}).run_dir() / "summary.json").read_text())

    assert [h["round"] for h in summary["history"]] == [1, 2, 3, 4]
    assert summary["privacy"] == straight["privacy"]  # no ledger entry lost, none doubled
    for partition in (0, 1):  # each device's own account: one DP-SGD segment a round
        account = json.loads((run_dir / "device-state" / "restarted"
                              / f"partition-{partition}-dp.json").read_text())
        assert len(account["steps"]) == 4
    replayed = "asked again with the same model" in "".join(
        log.read_text(errors="replace") for log in (run_dir / "logs").glob("*.log"))
    assert replayed or saved_round_3  # round 3 was answered from the kept replies
    assert leftover_processes(run_dir) == []


def test_the_anonymizer_trains_and_applies_in_a_loopback_deployment(tmp_path, leftover_processes):
    run_dir = tmp_path / "anonymized"

    summary = deploy_locally({"num-server-rounds": 1, "local-epochs": 1, "fraction-evaluate": 0.0,
                              "window-seconds": 0.5, "anonymizer-rounds": 2,
                              "anonymizer-steps": 2, "anonymize-training": True,
                              "anonymizer-release": 8, "release-k": 2},
                             supernodes=2, out=run_dir, show_progress=False)

    assert_complete_run(run_dir, rounds=1)
    assert [entry["replies"] for entry in summary["anonymizer"]] == [2, 2]
    assert (run_dir / "anonymizer.pt").stat().st_size > 0
    entry = summary["history"][0]
    assert entry["replies"] == 2 and entry["rejected"] == 0
    assert entry["released"] + entry["release_suppressed"] == 16
    assert len(entry["risk"]) == 2
    assert leftover_processes(run_dir) == []
