"""The anonymizer inside a run: federated rounds, the training path and the release path."""

import json

import numpy as np
import pandas as pd
import pytest

from fedmosaic.privacy.anonymizer.training import load_anonymizer
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import cached_dataset

TINY = {"num-clients": 4, "num-server-rounds": 2, "local-epochs": 1, "window-seconds": 0.5,
        "fraction-evaluate": 0.0}


def test_a_run_trains_the_anonymizer_federatedly_then_trains_and_releases_through_it(tmp_path):
    config = run_in_process({**TINY, "anonymizer-rounds": 3, "anonymizer-steps": 2,
                             "anonymize-training": True, "anonymizer-release": 12,
                             "release-k": 2, "anonymizer-strength": 0.9,
                             "anonymizer-reframe": 0.5, "out-dir": str(tmp_path),
                             "run-name": "anon"})

    run_dir = config.run_dir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["anonymizer"]] == [1, 2, 3]
    for entry in summary["anonymizer"]:
        assert entry["replies"] == 4 and entry["failed"] == 0 and entry["rejected"] == 0
        assert entry["bytes-down"] > 0 and entry["bytes-up"] > 0
    generator = load_anonymizer(run_dir / "anonymizer.pt", cached_dataset(config).specs)
    assert generator is not None
    for entry in summary["history"]:
        assert entry["released"] + entry["release_suppressed"] == 4 * 12
    assert summary["final_accuracy"] != summary["initial_accuracy"]
    table = pd.read_csv(run_dir / "releases" / "round-001.csv")
    assert table.groupby(["modalities", "label"]).size().min() >= 2
    assert table["pseudonym"].nunique() >= 2 and not table["pseudonym"].isin(
        [str(p) for p in range(4)]).any()
    released = np.load(run_dir / "releases" / "round-001.npz")
    assert len(released["labels"]) == len(table)


def test_a_later_run_reuses_a_trained_anonymizer(tmp_path):
    first = run_in_process({**TINY, "num-server-rounds": 1, "anonymizer-rounds": 1,
                            "anonymizer-steps": 1, "out-dir": str(tmp_path), "run-name": "a"})

    second = run_in_process({**TINY, "num-server-rounds": 1, "anonymize-training": True,
                             "anonymizer": str(first.run_dir() / "anonymizer.pt"),
                             "out-dir": str(tmp_path), "run-name": "b"})

    summary = json.loads((second.run_dir() / "summary.json").read_text())
    assert "anonymizer" not in summary and summary["rounds"] == 1


def test_the_anonymizer_settings_are_checked_before_a_run(tmp_path):
    with pytest.raises(ValueError, match="need an anonymizer"):
        run_in_process({**TINY, "anonymize-training": True, "out-dir": str(tmp_path)})
    with pytest.raises(ValueError, match="anonymizer-strength must lie in"):
        run_in_process({**TINY, "anonymizer-strength": 2.0, "out-dir": str(tmp_path)})
    with pytest.raises(ValueError, match="anonymizer-reframe must lie in"):
        run_in_process({**TINY, "anonymizer-reframe": -0.5, "out-dir": str(tmp_path)})
    with pytest.raises(ValueError, match="edge-role='cloud'"):
        run_in_process({**TINY, "anonymizer-rounds": 1, "num-edges": 1, "edge-role": "cloud",
                        "out-dir": str(tmp_path)})
