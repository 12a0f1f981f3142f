"""Training for missing modalities end to end: the unimodal views' loss, a federation lacking
a named modality."""

import json

import pytest

from fedmosaic.config import RunConfig
from fedmosaic.server.app import warn_pointless_settings
from fedmosaic.simulation.inprocess import run_in_process

SMALL = {"dataset": "smartwatch", "num-clients": 3, "num-server-rounds": 2, "local-epochs": 1,
         "fraction-evaluate": 1.0, "risk-perception": False}


def test_a_federation_lacking_a_named_modality_never_trains_or_evaluates_with_it(tmp_path):
    config = run_in_process({**SMALL, "missing-modality-devices": 1.0,
                             "missing-modality-name": "accelerometer",
                             "unimodal-loss-weight": 1.0, "out-dir": str(tmp_path)})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["history"][-1]["device_missing_modality"] is None  # none holds two
    assert all(device["modalities_held"][0] == 0 < device["modalities_held"][1]
               for device in summary["partitions"]["devices"])  # accelerometer, gyroscope
    central = summary["missing_modality"]["accelerometer"]  # the central test has both
    assert central["samples"] > 0 and 0.0 <= central["accuracy_without"] <= 1.0
    assert all(entry["rejected"] == 0 for entry in summary["history"])


def test_an_unknown_lacking_modality_is_refused_before_round_one(tmp_path):
    with pytest.raises(ValueError, match="must be one of the dataset's modalities"):
        run_in_process({**SMALL, "missing-modality-devices": 0.5,
                        "missing-modality-name": "thermometer", "out-dir": str(tmp_path)})


@pytest.mark.parametrize(("settings", "warned"), [
    ({"missing-modality-name": "gyroscope"}, True),
    ({"missing-modality-name": "gyroscope", "missing-modality-devices": 0.5}, False),
])
def test_a_named_modality_without_lacking_devices_is_warned_about(settings, warned, caplog):
    warn_pointless_settings(RunConfig.from_mapping(settings))

    assert ("missing-modality-name=gyroscope has no effect" in caplog.text) is warned
