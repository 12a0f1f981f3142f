"""What `fedmosaic run` prints when a run is done."""

import io
from pathlib import Path

from rich.console import Console

from fedmosaic import cli

SUMMARY = {"rounds": 10, "final_accuracy": 0.787, "final_device_accuracy": 0.798,
           "missing_modality_drop_points": 45.64, "wall_seconds": 41.0}


def printed(monkeypatch, summary):
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=400))
    cli._report(summary, Path("runs/x"))
    return out.getvalue()


def test_the_missing_modality_drop_is_given_for_the_global_model_and_the_devices(monkeypatch):
    text = printed(monkeypatch, {**SUMMARY, "final_device_missing_modality_drop_points": 47.26})

    assert ("worst missing-modality drop 45.6 points (global model), 47.3 on devices' own data"
            in text)
    assert "on devices' own data 0.7980" in text


def test_without_a_federated_evaluation_only_the_global_models_drop_is_given(monkeypatch):
    text = printed(monkeypatch, {**SUMMARY, "final_device_accuracy": None})

    assert "worst missing-modality drop 45.6 points," in text
    assert "own data" not in text
