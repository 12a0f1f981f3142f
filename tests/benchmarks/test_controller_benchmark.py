"""The controller benchmark: its comparisons by hand, and its quick mode end to end."""

import argparse
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


def fake_run(seen):
    """A stand-in for ``run_in_process``: records the overrides, writes a minimal summary."""
    from fedmosaic.config import RunConfig

    def run(overrides):
        seen.append(overrides)
        config = RunConfig.from_mapping(overrides)
        config.run_dir().mkdir(parents=True, exist_ok=True)
        (config.run_dir() / "summary.json").write_text(json.dumps(
            {"final_accuracy": 0.5, "rounds": config.num_server_rounds,
             "privacy": {"devices": {"0": {"epsilon_spent": 1.0, "over_cap": []}}}}))
        return config

    return run


ATTACKS = {"reidentification_from_embeddings": {"accuracy": 0.9, "chance": 0.25},
           "membership_loss_threshold": {"tpr_at_01pct_fpr": 0.0}}


def grid_args(tmp_path, **options):
    defaults = {"first_seed": 0, "seeds": 2, "quick": False, "datasets": "smartwatch,synthetic",
                "policies": "none", "caps": "3", "local_epochs": None, "clients": None,
                "rounds": None, "runs_dir": tmp_path / "runs", "out": tmp_path / "c.json"}
    return argparse.Namespace(**{**defaults, **options})


def test_the_grid_gives_smartwatch_its_dp_settings_and_each_cell_records_its_own(
        controller, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(controller, "run_in_process", fake_run(seen))
    monkeypatch.setattr(controller, "attack_run", lambda run_dir: ATTACKS)

    cells, config = controller.run_grid(grid_args(tmp_path, first_seed=4))

    assert [(o["dataset"], o["seed"]) for o in seen] == [
        ("smartwatch", 4), ("smartwatch", 5), ("synthetic", 4), ("synthetic", 5)]
    assert all(o["local-epochs"] == 1 and o["num-clients"] == 4 for o in seen)
    assert [o.get("learning-rate") for o in seen] == [0.01, 0.01, None, None]
    assert "attack" not in seen[0] and seen[1]["attack"] == "burst"  # odd seed: risk shift
    assert cells[0]["settings"]["learning-rate"] == 0.01
    assert cells[0]["settings"]["max-grad-norm"] == 0.1
    assert cells[2]["settings"]["max-grad-norm"] == 1.0  # synthetic: the run default
    assert config["seeds"] == [4, 5]


def test_local_epochs_override_the_grid_default(controller, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(controller, "run_in_process", fake_run(seen))
    monkeypatch.setattr(controller, "attack_run", lambda run_dir: ATTACKS)

    controller.run_grid(grid_args(tmp_path, seeds=1, datasets="smartwatch", local_epochs=3))

    assert seen[0]["local-epochs"] == 3


def write_cells(path, cells):
    path.write_text(json.dumps({"cells": cells}))
    return path


def test_merge_joins_shards_and_refuses_a_cell_twice_or_mixed_settings(controller, tmp_path):
    settings = {"local-epochs": 1}
    first = write_cells(tmp_path / "a.json", [{**cell("td3", 0.5, 0.3, seed=0),
                                               "settings": settings}])
    second = write_cells(tmp_path / "b.json", [{**cell("td3", 0.5, 0.3, seed=1),
                                                "settings": settings}])
    other = write_cells(tmp_path / "c.json", [{**cell("td3", 0.5, 0.3, seed=2),
                                               "settings": {"local-epochs": 5}}])

    assert [c["seed"] for c in controller.merged_cells([first, second])] == [0, 1]
    with pytest.raises(ValueError, match="is in both"):
        controller.merged_cells([first, first])
    with pytest.raises(ValueError, match="ran with"):
        controller.merged_cells([first, other])


def test_figures_break_down_by_dataset_and_by_risk_shift(controller):
    cells = [{**cell(p, acc, 0.3, seed=s), "dataset": d, "risk_shift": bool(s % 2),
              "membership_tpr_at_01pct_fpr": 0.0, "epsilon_spent_max": 2.4,
              "controller_seconds_per_round": 0.0, "round_seconds": 1.0, "over_cap": 0}
             for d in ("a", "b") for s in (0, 1) for p, acc in (("static", 0.5), ("td3", 0.6))]

    figures = controller.figures_with_breakdowns(cells, seed=0)

    assert set(figures["by_dataset"]) == {"a", "b"}
    assert set(figures["by_risk_shift"]) == {"attackers", "no_attackers"}
    assert figures["by_dataset"]["a"]["td3_dominates_static_share"] == 1.0
    assert figures["epsilon_spent_share_td3"] == pytest.approx(0.8)  # 2.4 of a cap of 3
