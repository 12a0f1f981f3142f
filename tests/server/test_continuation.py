"""A server stopped mid-round and resumed in its folder ends with an uninterrupted run's ledger."""

import json

import pytest
import torch

from fedmosaic.server.continuation import Continuation
from fedmosaic.server.recorder import RunRecorder
from fedmosaic.simulation.inprocess import run_in_process

RUN = {"num-clients": 3, "num-server-rounds": 4, "local-epochs": 1, "fraction-evaluate": 0.0,
       "dp": True, "dp-epsilon-budget": 50.0, "risk-perception": False}


class ServerStopped(Exception):
    pass


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure-aggregation"])
def test_a_run_resumed_after_a_stop_in_round_3_matches_one_that_never_stopped(tmp_path,
                                                                              monkeypatch,
                                                                              secure):
    run = {**RUN, "secure-aggregation": secure}
    straight = json.loads((run_in_process({**run, "out-dir": str(tmp_path),
                                           "run-name": "straight"}).run_dir()
                           / "summary.json").read_text())
    checkpoint = RunRecorder.checkpoint

    def stop_in_round_3(self, server_round, *args):
        if server_round == 3:  # the devices trained and replied; the server dies before saving
            raise ServerStopped
        return checkpoint(self, server_round, *args)

    monkeypatch.setattr(RunRecorder, "checkpoint", stop_in_round_3)
    stopped = {**run, "out-dir": str(tmp_path), "run-name": "stopped"}
    with pytest.raises(ServerStopped):
        run_in_process(stopped)
    monkeypatch.setattr(RunRecorder, "checkpoint", checkpoint)
    run_dir = tmp_path / "stopped"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "round-001.pt", "round-002.pt"]

    run_in_process({**stopped, "resume-from": str(run_dir / "checkpoints" / "round-002.pt")})
    resumed = json.loads((run_dir / "summary.json").read_text())

    assert [h["round"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["initial_accuracy"] == straight["initial_accuracy"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"round-00{r}.pt" for r in (1, 2, 3, 4)]
    # the devices answered round 3 again with the replies they had sent (masked afresh for
    # the new key exchange under secure aggregation): no second spend, and the masks cancel
    assert resumed["privacy"] == straight["privacy"]
    assert resumed["history"][2]["rejected"] == 0
    if secure:  # every kept reply was unmasked: a mask that did not cancel ruins the model
        assert not any(resumed["history"][2]["secure_aggregation"]["dropped"].values())
        assert resumed["history"][2]["accuracy"] > 0.25
    for entry in resumed["privacy"]["devices"].values():
        assert entry["rounds_joined"] == [1, 2, 3, 4] and len(entry["segments"]) == 4
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]


def test_a_checkpoint_from_another_folder_starts_a_new_run(tmp_path):
    other = tmp_path / "other" / "checkpoints"
    other.mkdir(parents=True)
    torch.save({"round": 2, "history": []}, other / "round-002.pt")
    own = tmp_path / "run" / "checkpoints"
    own.mkdir(parents=True)
    torch.save({"round": 3, "history": [], "initial_accuracy": 0.1}, own / "round-003.pt")

    assert Continuation.of(other / "round-002.pt", tmp_path / "run", 5) == Continuation()
    assert Continuation.of(own / "round-003.pt", tmp_path / "run", 5).rounds_done == 3
    with pytest.raises(ValueError, match="already completed round 3 of num-server-rounds=3"):
        Continuation.of(own / "round-003.pt", tmp_path / "run", 3)
