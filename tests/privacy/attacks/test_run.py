import json

import pytest

from fedmosaic.privacy.attacks.__main__ import main
from fedmosaic.privacy.attacks.run import attack_run
from fedmosaic.simulation.inprocess import run_in_process


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = run_in_process({"num-clients": 3, "num-server-rounds": 2, "local-epochs": 1,
                             "fraction-evaluate": 0.0, "out-dir": str(out),
                             "run-name": "attacked"})
    return config.run_dir()


def test_attack_run_attacks_the_last_checkpoint(finished_run):
    results = attack_run(finished_run)

    assert results["round"] == 2
    membership = results["membership_loss_threshold"]
    assert 0.0 <= membership["auc"] <= 1.0
    assert membership["members"] == membership["non_members"] > 0
    reident = results["reidentification_from_embeddings"]
    # 3 clients: the global model's embeddings identify subjects far above chance
    assert reident["accuracy"] > reident["chance"] + 0.2


def test_cli_prints_and_writes_json_for_a_chosen_round(finished_run, tmp_path, capsys):
    main([str(finished_run), "--round", "1", "--json", str(tmp_path / "a.json")])

    assert "membership (loss threshold): AUC" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["round"] == 1


def test_missing_checkpoints_are_reported(tmp_path, finished_run):
    with pytest.raises(FileNotFoundError, match="found none"):
        attack_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for round 9; .* \[1, 2\]"):
        attack_run(finished_run, 9)
