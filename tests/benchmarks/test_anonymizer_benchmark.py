"""The anonymizer benchmark runs in quick mode and writes every figure it claims."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_writes_the_figures_and_their_targets(tmp_path):
    out = tmp_path / "anonymizer.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "anonymizer.py"), "--quick",
         "--datasets", "smartwatch", "--out", str(out), "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert result["quick"] is True
    assert figures["smartwatch_reid_margin_points"] == 100 * (
        figures["smartwatch_reid_anonymized"] - figures["smartwatch_reid_chance"])
    assert figures["smartwatch_activity_loss_points"] == 100 * (
        figures["smartwatch_activity_raw"] - figures["smartwatch_activity_anonymized"])
    assert figures["smartwatch_reid_raw"] > figures["smartwatch_reid_chance"]
    assert 0.0 <= figures["smartwatch_reid_label_floor"] <= 1.0
    assert figures["smartwatch_distortion_anonymized"] > 0
    curve = result["datasets"]["smartwatch"]["curve"]
    assert list(curve) == ["0", "0.25", "0.5", "0.75", "1"]
    assert curve["0"]["distortion"] == 0.0  # λ = 0 is the identity
    assert curve["0"]["reid"] == figures["smartwatch_reid_raw"]
    for name in ("risk_anomaly_f1", "isolation_forest_f1"):
        assert 0.0 <= figures[name] <= 1.0
    assert set(result["targets"]) == set(result["targets_met"]) == {
        "smartwatch_reid_margin_points", "smartwatch_activity_loss_points", "risk_anomaly_f1"}
    assert result["risk"]["anomalous_share"] == 0.2


def test_the_label_floor_is_the_bayes_attacker_that_reads_only_the_label(anonymizer_benchmark):
    # label 0 is mostly attribute 1, label 1 mostly attribute 0, label 2 is never trained on
    train_labels = np.array([0, 0, 0, 1, 1, 1])
    train_ids = np.array([1, 1, 0, 0, 0, 1])
    test_labels = np.array([0, 1, 1, 2])
    test_ids = np.array([1, 0, 1, 0])

    # it guesses 1, 0, 0 and, for the unseen label, the most frequent value (a tie: 0)
    floor = anonymizer_benchmark.label_only_reid(train_labels, train_ids, test_labels, test_ids)

    assert floor == 0.75


def test_the_label_floor_is_chance_when_every_attribute_has_the_same_label_mix(
        anonymizer_benchmark):
    labels = np.tile(np.arange(4), 6)  # every attribute value holds each label twice
    ids = np.repeat(np.arange(3), 8)

    assert anonymizer_benchmark.label_only_reid(labels, ids, labels, ids) == 1 / 3
