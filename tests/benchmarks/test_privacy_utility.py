"""The privacy/utility benchmark runs in quick mode and writes every figure it claims."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_writes_the_figures(tmp_path):
    out = tmp_path / "privacy_utility.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "privacy_utility.py"), "--quick",
         "--out", str(out), "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert result["quick"] is True
    assert 0.0 <= figures["accuracy_eps_inf"] <= 1.0
    assert 0.0 <= figures["mia_auc_eps_inf"] <= 1.0
    assert figures["inversion_psnr_drop_db"] == (figures["inversion_psnr_no_dp_db"]
                                                 - figures["inversion_psnr_dp_eps8_db"])
    assert 0.0 <= figures["telemetry_linkage_ldp"] <= 1.0
    assert figures["reidentification_chance"] < figures["reidentification_accuracy_eps_inf"]
    dp_measured = not result["missing"]
    for name in ("accuracy_loss_points_eps8", "accuracy_loss_points_eps3", "mia_auc_eps8",
                 "dp_time_ratio"):
        assert (figures[name] is not None) == dp_measured, name
    if dp_measured:
        assert figures["dp_time_ratio"] > 0.0
        assert set(result["runs"]) == {"eps1", "eps3", "eps8", "eps_inf"}
