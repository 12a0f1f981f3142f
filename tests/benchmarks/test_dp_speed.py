"""The DP-speed benchmark runs in quick mode and writes every figure it claims."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_writes_the_figures(tmp_path):
    out = tmp_path / "dp_speed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dp_speed.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures, medians = result["figures"], result["median_seconds"]
    assert result["quick"] is True
    assert all(len(v) == 2 for v in result["seconds"].values())
    for mode in ("hooks", "functorch"):
        assert figures[f"{mode}_time_ratio"] == pytest.approx(medians[mode] / medians["plain"])
    assert figures["fastest_mode"] == min(("hooks", "functorch"), key=medians.get)
    assert figures["default_is_fastest"] == (figures["fastest_mode"] == "hooks")
