"""The robustness benchmark runs in quick mode and writes every figure it claims."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_writes_the_figures(tmp_path):
    out = tmp_path / "robustness.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--quick",
         "--out", str(out), "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures, cells = result["figures"], result["cells"]
    assert result["quick"] is True
    assert len(cells) == 10  # sign-flip at 30 % and ALIE at 20 %, five strategies each
    clean = figures["clean_fedavg_accuracy"]["smartwatch"]
    best_sign_flip = max(cells[f"smartwatch/sign-flip/0.3/{s}"]["accuracy"]
                         for s in ("trimmed-mean", "fedmedian", "multikrum", "moe-fusion-trim"))
    assert figures["worst_gap_points_30pct"] == pytest.approx(100 * (clean - best_sign_flip))
    assert figures["fedavg_worst_drop_points_30pct"] == pytest.approx(
        100 * (clean - cells["smartwatch/sign-flip/0.3/fedavg"]["accuracy"]))
    (pair,) = result["missing_modality"].values()  # one seed in quick mode
    gain = 100 * (pair["moe-fusion"]["accuracy"] - pair["fedavg"]["accuracy"])
    assert figures["moe_missing_modality_gain_points"] == pytest.approx(gain)
    assert figures["moe_missing_modality_gain_points_per_seed"] == pytest.approx([gain])
    assert all(0.0 <= cell["accuracy"] <= 1.0 for cell in cells.values())


def test_each_grid_attacks_its_datasets_unless_told_others(robustness):
    figures = robustness.grid_cells("figures", quick=False)
    on_synthetic = robustness.grid_cells("figures", quick=False, datasets=("synthetic",))
    full = robustness.grid_cells("full", quick=False)
    full_smartwatch = robustness.grid_cells("full", quick=False, datasets=("smartwatch",))

    assert {d for d, *_ in figures} == {"smartwatch"} and len(figures) == 6 * 5
    assert [cell[1:] for cell in on_synthetic] == [cell[1:] for cell in figures]
    assert {d for d, *_ in on_synthetic} == {"synthetic"}
    assert len(full) == 2 * 8 * 3 * 5
    assert full_smartwatch == [cell for cell in full if cell[0] == "smartwatch"]
    assert robustness.grid_cells("modality", quick=False, datasets=("synthetic",)) == []


def test_attacks_keep_only_their_cells_of_the_grid(robustness):
    figures = robustness.grid_cells("figures", quick=False)
    split = [robustness.grid_cells("figures", quick=False, attacks=half)
             for half in (("sign-flip", "gaussian", "scale-10"), ("scale-100", "alie", "ipm"))]

    assert sorted(split[0] + split[1]) == sorted(figures)
    assert {attack for _, attack, *_ in split[0]} == {"sign-flip", "gaussian", "scale-10"}
    assert robustness.grid_cells("figures", quick=False, attacks=("nan",)) == []


def test_speed_figures_average_the_curves_and_find_the_first_round_at_90pct(robustness):
    def run(curve):
        return {"accuracy_per_round": curve}

    runs = {"seed-0": {"fedavg": run([0.2, 0.5, 0.9]), "moe-fusion": run([0.4, 0.9, 0.95])},
            "seed-1": {"fedavg": run([0.3, 0.6, 0.8]), "moe-fusion": run([0.3, 0.6, 0.8])}}

    figures = robustness.speed_figures(runs)

    assert figures["moe_missing_modality_mean_accuracy_gain_points"] == pytest.approx(
        (100 * (0.75 - 1.6 / 3) + 0.0) / 2)
    assert figures["moe_missing_modality_rounds_to_90pct"] == {"fedavg": [3, None],
                                                               "moe-fusion": [2, None]}
    assert robustness.speed_figures({})["moe_missing_modality_mean_accuracy_gain_points"] is None
