"""The learning-quality benchmark: its figures by hand, and its quick mode end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cell(part, variant, seed=0, **figures):
    return {"part": part, "variant": variant, "seed": seed, **figures}


def test_personalized_accuracy_is_the_mean_over_seeds_and_the_best_is_named(learning_quality):
    cells = [cell("personalization", "none", s, final_device_accuracy=0.7) for s in (0, 1)]
    cells += [cell("personalization", "fedrep", 0, final_device_accuracy=0.9),
              cell("personalization", "fedrep", 1, final_device_accuracy=0.96),
              cell("personalization", "ditto", 0, final_device_accuracy=0.92),
              cell("personalization", "centralized", 0, final_device_accuracy=0.95)]

    figures = learning_quality.summarize(cells)

    assert figures["personalized_accuracy"]["fedrep"] == pytest.approx(0.93)
    assert figures["personalized_accuracy_best_method"] == "fedrep"
    assert figures["personalized_accuracy_target_met"] is False  # 0.93 < 0.937
    assert figures["personalized_accuracy_centralized_this_run"] == 0.95


def test_dp_loss_is_against_the_same_path_without_dp(learning_quality):
    cells = [cell("personalization", "none", final_accuracy=0.8, wall_seconds=100.0),
             cell("dp", "features-nodp", final_accuracy=0.7, wall_seconds=50.0),
             cell("dp", "scratch-eps8", final_accuracy=0.6, wall_seconds=300.0),
             cell("dp", "features-eps8", final_accuracy=0.68, wall_seconds=60.0)]

    figures = learning_quality.summarize(cells)

    assert figures["dp_accuracy_loss_points_eps8"] == pytest.approx(
        {"scratch": 20.0, "features": 2.0})
    assert figures["dp_accuracy_loss_points_eps8_target_met"] is True  # the best path
    assert figures["dp_time_ratio"] == pytest.approx({"scratch": 3.0, "features": 1.2})
    assert "dp_accuracy_loss_points_eps3" not in figures  # not run: not reported


def test_tuned_dp_is_against_the_better_of_the_two_runs_without_dp(learning_quality):
    cells = [cell("dp", "public-nodp", final_accuracy=0.75, cpu_seconds=50.0),
             cell("dp", "public-tuned-eps8", final_accuracy=0.74, reference_accuracy=0.78,
                  run_cpu_seconds=12.0, reference_cpu_seconds=10.0, cpu_seconds=200.0),
             cell("dp", "public-tuned-eps3", final_accuracy=0.70, reference_accuracy=0.72,
                  run_cpu_seconds=14.0, reference_cpu_seconds=10.0, cpu_seconds=200.0)]

    figures = learning_quality.summarize(cells)

    assert figures["dp_accuracy_loss_points_eps8"]["public-tuned"] == pytest.approx(4.0)
    assert figures["dp_accuracy_loss_points_eps3"]["public-tuned"] == pytest.approx(5.0)
    assert figures["dp_time_ratio"]["public-tuned"] == pytest.approx((12 + 14) / (10 + 10))


def test_missing_modality_target_needs_both_the_bound_and_the_baseline(learning_quality):
    cells = [cell("missing", "ours", missing_modality_drop_points=2.0, final_accuracy=0.8),
             cell("missing", "concat", missing_modality_drop_points=1.0, final_accuracy=0.8)]

    figures = learning_quality.summarize(cells)

    assert figures["missing_modality_drop_points"]["ours"] == 2.0
    assert figures["missing_modality_target_met"] is False  # the baseline dropped less


def test_per_device_drops_take_fedavgs_from_the_missing_part_and_the_rest_from_theirs(
        learning_quality):
    cells = [cell("missing", "ours", s, final_device_missing_modality_drop_points=d,
                  final_device_accuracy=0.8, missing_modality_drop_points=10.0)
             for s, d in ((0, 8.0), (1, 12.0))]
    cells += [cell("missing-personalized", "fedrep", s, final_device_missing_modality_drop_points=d,
                   final_device_accuracy=a) for s, d, a in ((0, 4.0, 0.9), (1, 6.0, 0.94))]
    cells.append(cell("personalization", "fedrep", final_device_missing_modality_drop_points=40.0,
                      final_device_accuracy=0.95))  # trained without dropout: not this figure

    figures = learning_quality.summarize(cells)

    assert figures["missing_modality_drop_points_per_device"] == {"none": 10.0, "fedrep": 5.0}
    assert figures["missing_modality_accuracy_per_device"] == pytest.approx(
        {"none": 0.8, "fedrep": 0.92})


def test_dp_figures_are_means_over_seeds_each_against_its_own_seed(learning_quality):
    cells = [cell("dp", "public-nodp", 0, final_accuracy=0.80, cpu_seconds=10.0),
             cell("dp", "public-eps8", 0, final_accuracy=0.70, cpu_seconds=16.0),
             cell("dp", "public-nodp", 1, final_accuracy=0.90, cpu_seconds=10.0),
             cell("dp", "public-eps8", 1, final_accuracy=0.86, cpu_seconds=12.0),
             cell("dp", "public-head-nodp", 1, final_accuracy=0.75, cpu_seconds=8.0),
             cell("dp", "public-head-eps8", 1, final_accuracy=0.74, cpu_seconds=10.0)]

    figures = learning_quality.summarize(cells)

    assert figures["dp_seeds"] == [0, 1]
    assert figures["dp_accuracy_loss_points_eps8"] == pytest.approx(
        {"public": (10.0 + 4.0) / 2, "public-head": 1.0})
    assert figures["dp_accuracy_loss_points_eps8_per_seed"]["public"] == pytest.approx(
        [10.0, 4.0])
    assert figures["dp_accuracy_loss_points_eps8_per_seed"]["public-head"][0] is None
    assert figures["dp_accuracy_loss_points_eps8_target_met"] is False  # head: one seed of 2
    assert figures["dp_time_ratio"] == pytest.approx({"public": (1.6 + 1.2) / 2,
                                                      "public-head": 1.25})
    assert figures["dp_accuracy"]["public-eps8"] == pytest.approx(0.78)
    # seed 0: 0.80 - 0.70; seed 1: public's 0.90 without DP - its 0.86 (head's 0.74 is lower)
    assert figures["dp_accuracy_loss_points_against_best_nodp_eps8"] == pytest.approx(7.0)
    assert figures["dp_accuracy_loss_points_against_best_nodp_eps8_per_seed"] == pytest.approx(
        [10.0, 4.0])
    assert figures["dp_accuracy_per_seed"]["public-head-eps8"] == [None, 0.74]


def test_the_best_ceiling_counts_even_where_its_path_has_no_dp_run_yet(learning_quality):
    cells = [cell("dp", "public-nodp", final_accuracy=0.80),
             cell("dp", "public-head-nodp", final_accuracy=0.72),
             cell("dp", "public-head-eps8", final_accuracy=0.70)]  # public-eps8 not run (yet)

    figures = learning_quality.summarize(cells)

    assert figures["dp_accuracy_loss_points_eps8"] == pytest.approx({"public-head": 2.0})
    assert figures["dp_accuracy_loss_points_against_best_nodp_eps8"] == pytest.approx(10.0)


def test_a_cut_short_grid_still_has_whole_figures_first(learning_quality):
    cells = learning_quality.cells_to_run(["personalization", "missing", "dp"], [0, 1], [8, 3, 1])

    order = [(c["part"], c["variant"], c["seed"]) for c in cells]
    assert order.index(("dp", "scratch-eps3", 0)) < order.index(("personalization", "none", 1))
    first_seed = [o for o in order if o[0] == "dp" and o[2] == 0]
    assert order.index(first_seed[-1]) < order.index(("dp", "public-nodp", 1))
    assert first_seed[-7:] == [("dp", "scratch-eps1", 0), ("dp", "features-eps1", 0),
                               ("dp", "public-eps1", 0), ("dp", "public-tuned-eps1", 0),
                               ("dp", "public-head-eps1", 0), ("dp", "public-reframed-eps1", 0),
                               ("dp", "public-head-reframed-eps1", 0)]
    assert order[-1] == ("dp", "public-head-reframed-eps1", 1)  # every seed runs the DP paths
    assert len(order) == len(set(order)) == 2 * 14 + 2 * (5 + 3 * 7)


def test_the_missing_part_trains_a_federation_without_each_modality(learning_quality):
    cells = learning_quality.cells_to_run(["missing"], [0], [8])

    assert [c["variant"] for c in cells] == [
        "ours", "ours-dropout", "concat", "concat-dropout", "concat-unimodal",
        "without-accelerometer", "without-gyroscope"]
    without = cells[-2]["overrides"]
    assert without == {"missing-modality-devices": 1.0, "missing-modality-name": "accelerometer"}


def test_the_modalities_trained_without_are_the_datasets(learning_quality):
    from fedmosaic.config import RunConfig
    from fedmosaic.task import cached_dataset

    specs = cached_dataset(RunConfig.from_mapping(learning_quality.BASE)).specs
    assert learning_quality.MODALITIES == tuple(spec.name for spec in specs)


def test_removal_figures_take_the_worst_modality_and_what_the_rest_reach_alone(
        learning_quality):
    removals = {"accelerometer": {"samples": 10, "accuracy_with": 0.8, "accuracy_without": 0.7},
                "gyroscope": {"samples": 10, "accuracy_with": 0.8, "accuracy_without": 0.75}}
    lacking = {"missing-modality-devices": 1.0, "missing-modality-name": "gyroscope"}

    plain = learning_quality.removal_figures({"missing_modality": removals, "config": {}})
    trained_without = learning_quality.removal_figures(
        {"missing_modality": removals, "config": lacking})
    half = learning_quality.removal_figures(
        {"missing_modality": removals, "config": {**lacking, "missing-modality-devices": 0.5}})

    assert plain == {"accuracy_without_worst": 0.7, "accuracy_without_trained_without": None}
    uneven = {**removals, "gyroscope": {"samples": 5, "accuracy_with": 0.95,
                                        "accuracy_without": 0.72}}  # other samples: bigger drop
    assert learning_quality.removal_figures({"missing_modality": uneven, "config": {}})[
        "accuracy_without_worst"] == 0.72
    assert trained_without["accuracy_without_trained_without"] == 0.75
    assert half["accuracy_without_trained_without"] is None  # part of the federation had it
    assert learning_quality.removal_figures({"missing_modality": {}, "config": {}}) == {
        "accuracy_without_worst": None, "accuracy_without_trained_without": None}


def test_missing_figures_name_every_variant_and_the_modalities_alone(learning_quality):
    cells = [cell("missing", v, missing_modality_drop_points=d, final_accuracy=0.8,
                  accuracy_without_worst=0.8 - d / 100)
             for v, d in (("ours", 8.0), ("ours-dropout", 10.0), ("concat", 50.0),
                          ("concat-dropout", 12.0), ("concat-unimodal", 9.0))]
    cells += [cell("missing", "without-accelerometer", accuracy_without_trained_without=0.73),
              cell("missing", "without-gyroscope", accuracy_without_trained_without=0.79)]

    figures = learning_quality.summarize(cells)

    assert figures["missing_modality_drop_points"] == {
        "ours": 8.0, "ours_dropout": 10.0, "concat_baseline": 50.0, "concat_with_dropout": 12.0,
        "concat_with_unimodal": 9.0, "moe_plain": None}
    assert figures["missing_modality_accuracy_without_worst"]["ours"] == pytest.approx(0.72)
    assert figures["missing_modality_accuracy_trained_without"] == {
        "accelerometer": 0.73, "gyroscope": 0.79}
    assert figures["missing_modality_target_met"] is False


def test_merged_cells_count_only_with_the_same_overrides(learning_quality):
    (ours,) = [c for c in learning_quality.cells_to_run(["missing"], [0], [8])
               if c["variant"] == "ours"]
    earlier = {**ours, "overrides": {"modality-dropout": 0.5}}  # ours, trained otherwise

    assert learning_quality.cell_key(earlier) != learning_quality.cell_key(ours)
    assert learning_quality.cell_key({**ours, "final_accuracy": 0.8}) == (
        learning_quality.cell_key(ours))


def test_personalized_missing_modalities_bring_fedavgs_run_trained_as_ours(
        learning_quality):
    alone = learning_quality.cells_to_run(["missing-personalized"], [0], [8])
    both = learning_quality.cells_to_run(["missing", "missing-personalized"], [0], [8])

    assert [(c["part"], c["variant"]) for c in alone] == [
        ("missing", "ours"), ("missing-personalized", "fedbn"),
        ("missing-personalized", "fedrep"), ("missing-personalized", "ditto"),
        ("missing-personalized", "local-gate")]
    assert all(c["overrides"]["unimodal-loss-weight"] == 1.0 for c in alone)  # ours' training
    assert [c["variant"] for c in both].count("ours") == 1


def test_a_subset_of_dp_paths_brings_the_references_it_is_measured_against(learning_quality):
    cells = learning_quality.cells_to_run(["dp"], [0], [8, 3], ["public-tuned"])

    assert [c["variant"] for c in cells] == ["public-nodp", "public-tuned-eps8",
                                             "public-tuned-eps3"]
    scratch = learning_quality.cells_to_run(["dp"], [0], [1], ["scratch"])
    assert [(c["part"], c["variant"]) for c in scratch] == [  # scratch's reference: FedAvg
        ("personalization", "none"), ("dp", "scratch-eps1")]
    both = learning_quality.cells_to_run(["personalization", "dp"], [0], [1], ["scratch"])
    assert [c["variant"] for c in both].count("none") == 1


def test_quick_mode_runs_every_part_and_writes_the_figures(tmp_path):
    out = tmp_path / "learning_quality.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    completed = subprocess.run(
        [sys.executable, "benchmarks/learning_quality.py", "--quick", "--epsilons", "8",
         "--out", str(out), "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert set(figures["personalized_accuracy"]) == {
        "none", "fedbn", "fedrep", "ditto", "local-gate", "local-only", "centralized"}
    assert set(figures["unseen_subject_accuracy"]) == {
        "none", "fedbn", "fedrep", "ditto", "local-gate", "centralized"}
    assert set(figures["dp_accuracy_loss_points_eps8"]) == {
        "scratch", "features", "public", "public-tuned", "public-head", "public-reframed",
        "public-head-reframed"}
    for run, reframe in (("dp-public-eps8-seed0", 0.0), ("dp-public-reframed-eps8-seed0", 1.0),
                         ("dp-public-head-reframed-nodp-seed0", 1.0)):
        ran = json.loads((tmp_path / "runs" / run / "summary.json").read_text())
        assert ran["pretraining"]["reframe"] == reframe
    (tuned,) = [c for c in result["cells"] if c["variant"] == "public-tuned-eps8"]
    for run in ("dp-public-tuned-eps8-seed0", "dp-public-tuned-eps8-seed0-nodp"):
        ran = json.loads((tmp_path / "runs" / run / "summary.json").read_text())["config"]
        assert {k: ran[k] for k in tuned["tuning"]["best"]} == tuned["tuning"]["best"]
        assert ran["dp"] == run.endswith("seed0")  # the DP run and its non-DP twin
    assert figures["missing_modality_drop_points"]["concat_baseline"] is not None
    assert figures["missing_modality_drop_points_half_devices_lacking"]["ours"] is not None
    assert set(figures["missing_modality_drop_points_per_device"]) == {
        "none", "fedbn", "fedrep", "ditto", "local-gate"}
    alone = figures["missing_modality_accuracy_trained_without"]
    assert set(alone) == {"accelerometer", "gyroscope"}
    assert all(0.0 <= accuracy <= 1.0 for accuracy in alone.values())
    assert len(result["cells"]) == 32
