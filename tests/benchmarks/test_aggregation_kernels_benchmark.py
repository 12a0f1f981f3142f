"""The aggregation-kernels benchmark runs small and writes every figure it claims."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_small_run_writes_the_figures_and_checks_every_result(tmp_path):
    out = tmp_path / "aggregation_kernels.json"

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "aggregation_kernels.py"), "--quick",
         "--updates", "11", "--size", "20000", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures, stack_seconds = result["figures"], result["stack_seconds"]
    for name in ("weighted_mean", "trimmed_mean", "weighted_trimmed_mean", "median"):
        assert figures[f"{name}_vs_numpy_mean"] == pytest.approx(
            stack_seconds[name] / stack_seconds["numpy_mean"])
    for name in ("weighted_mean", "trimmed_mean", "median"):
        assert figures[f"{name}_speedup_vs_flower"] == pytest.approx(
            result["baseline"]["flower_seconds"][name] / result["from_updates_seconds"][name])
    assert figures["trimmed_mean_vs_numpy_mean_target"] == 3.0
    assert figures["trimmed_mean_vs_numpy_mean_target_met"] == (
        figures["trimmed_mean_vs_numpy_mean"] <= 3.0)
    assert max(result["max_abs_error"].values()) < 1e-5
