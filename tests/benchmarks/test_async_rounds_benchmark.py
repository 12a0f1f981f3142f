"""The async benchmark compares both modes on the simulated clock and reports its figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import async_rounds  # noqa: E402


def test_time_to_target_and_accuracy_at_a_time_read_the_curves():
    rows = [{"simulated_seconds": 2.0, "accuracy": 0.3}, {"simulated_seconds": 5.0,
                                                          "accuracy": 0.6},
            {"simulated_seconds": 9.0, "accuracy": 0.7}]

    assert async_rounds.time_to(rows, 0.55) == 5.0
    assert async_rounds.time_to(rows, 0.9) is None
    assert async_rounds.accuracy_at(rows, 8.0) == 0.6
    assert async_rounds.accuracy_at(rows, 1.0) is None


def test_figures_are_geometric_and_plain_means_with_worst_cells_and_targets():
    cells = [{"speedup": 4.0, "delta_points": 1.0}, {"speedup": 1.0, "delta_points": -3.0},
             {"speedup": None, "delta_points": None}]

    figures = async_rounds.figures_of(cells)

    assert figures["async_time_to_target_speedup"] == pytest.approx(2.0)
    assert figures["async_time_to_target_speedup_worst"] == 1.0
    assert figures["async_final_accuracy_delta_points"] == pytest.approx(-1.0)
    assert figures["async_final_accuracy_delta_points_worst"] == -3.0
    assert figures["cells_without_speedup"] == 1
    assert figures["async_time_to_target_speedup_target_met"] is True
    assert figures["async_final_accuracy_delta_points_target_met"] is True


def test_quick_mode_runs_one_cell_of_both_modes(tmp_path):
    out = tmp_path / "async.json"

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "async_rounds.py"), "--quick", "--rounds",
         "2", "--workers", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    cell = json.loads(out.read_text())["cells"][0]
    assert len(cell["sync_curve"]) == 2 and len(cell["async_curve"]) == cell["async_versions"]
    assert cell["target_accuracy"] == pytest.approx(0.9 * cell["sync_final_accuracy"])
    if cell["speedup"] is not None:
        assert cell["speedup"] == pytest.approx(cell["sync_time_to_target"]
                                                / cell["async_time_to_target"])
