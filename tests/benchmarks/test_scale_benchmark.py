"""The scale benchmark measures both apps at each population and reports the issue's figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # noqa: E402


def run_row(population, ours_round, flower_round, ours_gib, completed=True):
    return {"population": population, "sampled": 10,
            "ours": {"median_round_seconds": ours_round, "peak_rss_gib": ours_gib,
                     "completed": completed},
            "baseline": {"median_round_seconds": flower_round, "completed": True},
            "round_time_ratio": ours_round / flower_round}


def test_figures_sit_beside_their_targets_and_misses_are_reported():
    figures = scale.figures_of([run_row(10_000, 3.0, 2.0, 3.5),
                                run_row(100_000, 1.0, 1.0, 5.0, completed=False)])

    assert figures["rss_gib_10k"] == 3.5 and figures["rss_gib_10k_target"] == 4.0
    assert figures["rss_gib_10k_target_met"] is True
    assert figures["round_time_ratio_10k"] == 1.5
    assert figures["round_time_ratio_10k_target_met"] is False
    assert figures["completed_100k"] is False and figures["completed_100k_target_met"] is False


def test_a_small_population_runs_both_apps_and_measures_them(tmp_path):
    out = tmp_path / "scale.json"

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick",
         "--populations", "30:3", "--samples", "8", "--runs-dir", str(tmp_path / "runs"),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    row = json.loads(out.read_text())["populations"][0]
    for side in ("ours", "baseline"):
        result = row[side]
        assert result["completed"], result.get("error")
        assert result["peak_rss_gib"] > 0.1 and result["peak_processes"] >= 3
        assert result["median_round_seconds"] > 0 and result["startup_seconds"] is not None
    assert row["round_time_ratio"] == pytest.approx(
        row["ours"]["median_round_seconds"] / row["baseline"]["median_round_seconds"])


def test_repeats_combine_into_medians_of_seconds_and_the_largest_peak():
    runs = [{"completed": True, "median_round_seconds": s, "startup_seconds": 10.0 + s,
             "peak_rss_gib": g} for s, g in ((3.0, 2.0), (5.0, 2.5), (4.0, 2.2))]

    side = scale.combined(runs)

    assert side["median_round_seconds"] == 4.0 and side["startup_seconds"] == 14.0
    assert side["peak_rss_gib"] == 2.5 and side["completed"] is True
    assert side["repeats"] == runs
    assert scale.combined(runs[:1]) is runs[0]
    failed = scale.combined([runs[0], {"completed": False, "error": "MemoryError"}])
    assert failed["completed"] is False and failed["median_round_seconds"] == 3.0


def test_a_failed_repeat_fails_the_targets_whatever_the_others_measured():
    row = run_row(10_000, 1.0, 1.0, 2.0, completed=False)
    assert scale.figures_of([row])["rss_gib_10k_target_met"] is False
    assert scale.figures_of([row])["round_time_ratio_10k_target_met"] is False
