"""Each personalization end to end in simulation, with the figures the run folder reports."""

import json

import numpy as np
import pytest
import torch

from fedmosaic.config import RunConfig
from fedmosaic.models.training import evaluate, make_loader
from fedmosaic.server.unseen_devices import evaluate_unseen_devices
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import build_model, cached_dataset

SMALL = {"dataset": "synthetic", "num-clients": 3, "unseen-devices": 2, "samples-per-client": 60,
         "num-server-rounds": 2, "local-epochs": 1, "fraction-evaluate": 1.0,
         "risk-perception": False}


@pytest.mark.parametrize("personalization", ["none", "fedbn", "fedrep", "ditto", "local-gate"])
def test_each_personalization_runs_and_reports_device_and_unseen_accuracy(
        tmp_path, personalization):
    config = run_in_process({**SMALL, "personalization": personalization,
                             "modality-dropout": 0.2, "run-name": personalization,
                             "out-dir": str(tmp_path)})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    for entry in summary["history"]:
        assert entry["replies"] == 3 + 3  # training and evaluation, the unseen two never
        assert 0.0 <= entry["device_accuracy"] <= 1.0
        assert entry["evaluate_rejected"] == 0
    assert summary["final_device_accuracy"] == summary["history"][-1]["device_accuracy"]
    device_removals = summary["history"][-1]["device_missing_modality"]
    modalities = {spec.name for spec in cached_dataset(config).specs}
    assert device_removals and set(device_removals) <= modalities
    assert summary["final_device_missing_modality_drop_points"] == pytest.approx(max(
        100 * (r["accuracy_with"] - r["accuracy_without"]) for r in device_removals.values()))
    assert set(summary["unseen_devices"]) == {"3", "4"}
    assert summary["unseen_subject_accuracy"] == pytest.approx(
        np.mean(list(summary["unseen_devices"].values())))
    assert 0.0 <= summary["unseen_subject_accuracy_head_fitted"] <= 1.0
    removals = summary["missing_modality"]
    assert removals and summary["missing_modality_drop_points"] == pytest.approx(max(
        100 * (r["accuracy_with"] - r["accuracy_without"]) for r in removals.values()))


def test_unseen_devices_without_personal_parameters_score_the_global_model():
    config = RunConfig.from_mapping(SMALL)
    dataset = cached_dataset(config)
    state = build_model(config, dataset).state_dict()

    scores = evaluate_unseen_devices(config, dataset, state)

    for partition in (3, 4):
        model = build_model(config, dataset)
        model.load_state_dict(state)
        _, test = dataset.partition(partition)
        loader = make_loader(test, dataset.specs, 256, shuffle=False, seed=0)
        with torch.no_grad():
            assert scores[partition] == evaluate(model, loader, dataset.specs).accuracy


def test_unseen_devices_fit_only_their_personal_parameters():
    config = RunConfig.from_mapping({**SMALL, "personalization": "fedrep"})
    dataset = cached_dataset(config)
    state = build_model(config, dataset).state_dict()
    before = {k: v.clone() for k, v in state.items()}

    scores = evaluate_unseen_devices(config, dataset, state)

    assert set(scores) == {3, 4} and all(0.0 <= s <= 1.0 for s in scores.values())
    assert all(torch.equal(before[k], state[k]) for k in state)  # the global model untouched


def test_too_many_unseen_devices_for_the_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unseen-devices \\+ public-devices must be at most 10"):
        run_in_process({"num-clients": 8, "unseen-devices": 3, "out-dir": str(tmp_path)})


def test_a_head_fitting_newcomer_changes_only_its_head():
    config = RunConfig.from_mapping({**SMALL, "local-epochs": 20, "learning-rate": 0.05,
                                     "samples-per-client": 200})
    dataset = cached_dataset(config)
    state = build_model(config, dataset).state_dict()

    plain = evaluate_unseen_devices(config, dataset, state)
    fitted = evaluate_unseen_devices(config, dataset, state, fit="head")

    assert set(fitted) == set(plain) == {3, 4}
    assert np.mean(list(fitted.values())) > np.mean(list(plain.values()))  # vs a random head
    with pytest.raises(ValueError, match="fit must be"):
        evaluate_unseen_devices(config, dataset, state, fit="all")


@pytest.mark.parametrize(("settings", "message"), [
    ({"personalization": "ditto", "dp": True}, "with dp=true use fedrep"),
    ({"personalization": "fedbn", "sensor-encoder": "features"}, "this model has none"),
])
def test_personalizations_that_cannot_hold_are_refused_before_round_one(
        tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        run_in_process({**SMALL, "dataset": "smartwatch", "unseen-devices": 0, **settings,
                        "out-dir": str(tmp_path)})
