"""The controller benchmark: its comparisons by hand, and its quick mode end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cell(policy, accuracy, reid, cap=3.0, seed=0, chance=0.1):
    return {"policy": policy, "dataset": "d", "seed": seed, "cap": cap, "accuracy": accuracy,
            "reidentification": reid, "reidentification_chance": chance}


def test_dominance_needs_both_axes_at_least_as_good_and_one_better(controller):
    assert controller.dominates(cell("a", 0.8, 0.2), cell("b", 0.7, 0.2))
    assert not controller.dominates(cell("a", 0.8, 0.2), cell("b", 0.8, 0.2))
    assert not controller.dominates(cell("a", 0.9, 0.3), cell("b", 0.7, 0.2))


def test_dominance_shares_against_static_at_every_cap_and_the_same_cap(controller):
    cells = [cell("static", 0.5, 0.3, cap=1.0), cell("static", 0.7, 0.4, cap=3.0),
             cell("td3", 0.75, 0.35, cap=3.0), cell("td3", 0.8, 0.25, cap=1.0)]

    every, same = controller.dominance_shares(cells, "td3")

    # ε=3: beats static@3 but not static@1 (0.35 > 0.3 re-identification); ε=1: beats both
    assert every == pytest.approx(0.5)
    assert same == pytest.approx(1.0)


def test_hypervolume_of_a_single_point_is_its_rectangle(controller):
    cells = [cell("p", 0.8, 0.25, cap=c) for c in (3.0,)]

    # minimise (−accuracy, reid) against (0, 1): area 0.8 × 0.75
    assert controller.hypervolume(cells, "p") == pytest.approx(0.8 * 0.75)


def test_the_iqm_difference_has_an_interval_around_it(controller):
    cells = []
    for seed in range(8):
        cells.append(cell("static", 0.6, 0.3, seed=seed))
        cells.append(cell("td3", 0.6 + 0.01 * seed, 0.3, seed=seed))

    result = controller.iqm_difference(cells, "td3", "static", seed=0)

    assert result["scenarios"] == 8
    assert result["ci_low"] <= result["iqm"] <= result["ci_high"]
    assert result["iqm"] == pytest.approx(0.035, abs=0.011)  # IQM of 0.00 … 0.07


def test_quick_mode_runs_the_policies_and_writes_the_figures(tmp_path):
    out = tmp_path / "controller.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "controller.py"), "--quick",
         "--out", str(out), "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert {c["policy"] for c in result["cells"]} == {"static", "bandit", "td3"}
    assert figures["td3_dominates_static_share_target"] == 0.8
    assert figures["td3_dominates_static_share"] in (0.0, 1.0)
    assert figures["over_cap_rounds"] == 0 and figures["epsilon_spent_max_over_cap"] <= 1.0
    for policy in ("static", "bandit", "td3"):
        assert figures[f"hypervolume_{policy}"] > 0
        assert 0 <= figures[f"controller_overhead_{policy}"] < 1
    assert all(c["audit_entries"] == 6 for c in result["cells"])  # 3 devices x 2 rounds
