"""The secure-aggregation benchmark measures both modes in one run and reports its figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import secure_aggregation  # noqa: E402


def test_figures_are_the_worst_cells_with_their_targets():
    cells = [{"devices": 10, "bytes_ratio": 1.1, "round_time_ratio": 1.2,
              "accuracy_delta_points": 0.5},
             {"devices": 10, "bytes_ratio": 1.3, "round_time_ratio": 1.6,
              "accuracy_delta_points": -0.2},
             {"devices": 50, "bytes_ratio": 2.4, "round_time_ratio": 3.0,
              "accuracy_delta_points": 0.1}]

    figures = secure_aggregation.figures_of(cells)

    assert figures["bytes_ratio"] == 2.4 and figures["bytes_ratio_target"] == 2.0
    assert figures["bytes_ratio_target_met"] is False
    assert figures["round_time_ratio_10_devices"] == 1.6
    assert figures["round_time_ratio_10_devices_target_met"] is False
    assert figures["round_time_ratio_50_devices"] == 3.0
    assert figures["accuracy_delta_points"] == 0.5


def test_quick_mode_runs_both_ten_device_cells_in_both_modes(tmp_path):
    out = tmp_path / "secure.json"

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "secure_aggregation.py"), "--quick",
         "--runs-dir", str(tmp_path / "runs"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(c["devices"], c["edges"]) for c in result["cells"]] == [(10, 0), (10, 2)]
    for cell in result["cells"]:
        assert cell["bytes_ratio"] == pytest.approx(cell["secure"]["bytes"]
                                                    / cell["plain"]["bytes"])
        assert cell["protocol"][0]["cohort"] == 10
    assert result["cells"][1]["secure"]["bytes_edge_to_cloud"] > 0
    assert set(result["figures"]) >= {"bytes_ratio", "round_time_ratio_10_devices",
                                      "bytes_ratio_target", "round_time_ratio_10_devices_target"}
