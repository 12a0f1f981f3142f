"""The own-data benchmark writes sorted files the file loader reads, and its figures follow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "shape", "classes"), [
    ("digits", (1, 8, 8), 10), ("wine", (1, 13), 3), ("breast_cancer", (1, 30), 2)])
def test_each_dataset_is_written_sorted_and_standardised_and_loads(own_data, tmp_path, name,
                                                                   shape, classes):
    path = own_data.write_dataset(name, tmp_path)

    labels = (pd.read_csv(path)["label"].to_numpy() if path.suffix == ".csv"
              else np.load(path)["labels"])
    assert np.all(np.diff(labels) >= 0)  # sorted by label, the case the loader must handle
    dataset = load_dataset(RunConfig.from_mapping({"dataset": str(path), "num-clients": 3}))
    (spec,) = dataset.specs
    assert (spec.shape, dataset.num_classes) == (shape, classes)
    assert all(len(set(dataset.partition(p)[0].labels)) == classes for p in range(3))


def test_quick_mode_writes_the_figures(tmp_path):
    out = tmp_path / "own_data.json"

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "own_data.py"), "--quick", "--out", str(out),
         "--runs-dir", str(tmp_path / "runs"), "--clients", "3"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures, wine = result["figures"], result["datasets"]["wine"]
    (run,) = wine["runs"]
    assert figures["iid_gap_points"] == pytest.approx(
        100 * (run["centralized"]["accuracy"] - run["iid"]["accuracy"]))
    assert figures["wine_iid_accuracy"] == run["iid"]["accuracy"]
    assert figures["fedavg_iid_gap_points"] == pytest.approx(
        100 * (run["centralized"]["accuracy"] - run["fedavg_iid"]["accuracy"]))
    def run_config(folder: str) -> dict:
        return json.loads((tmp_path / "runs" / folder / "summary.json").read_text())["config"]

    for folder in ("wine-iid-0", "wine-dirichlet-0"):  # server momentum 1 - 1/K, K = 3
        assert run_config(folder)["strategy"] == "fedavgm"
        assert run_config(folder)["server-momentum"] == pytest.approx(2 / 3)
    assert run_config("wine-fedavg-iid-0")["strategy"] == "fedavg"
    assert figures["iid_target_met"] == (figures["iid_gap_points"] <= 2.0)
    assert wine["partition_warnings"] == []
