"""What fedmosaic learns under subject heterogeneity, DP and missing modalities, against baselines.

Every cell is one real run on the smartwatch subjects (in-process Flower simulation, the app's
defaults: 10 rounds x 5 local epochs) with the first 8 subjects as devices and the last 2 held
out of training (``unseen-devices=2``, leave-subjects-out), or a baseline trained in the same
invocation on the same 8 subjects' training windows for the same number of epochs
(10 x 5 = 50):

* **personalization** — ``personalization`` ∈ {none (FedAvg), fedbn, fedrep, ditto,
  local-gate}, each seed; baselines: *local-only* (each device trains alone on its own
  windows) and *centralized* (the 8 devices' windows pooled);
* **missing modalities** — the hierarchical mixture trained with the unimodal views' loss
  (ours, :data:`OURS_MISSING`: ``unimodal-loss-weight=1``, ``models/unimodal.py``) and with
  modality dropout instead (``ours-dropout``: ``modality-dropout=0.5``), against zero-filled
  concatenation (``fusion=concat``, FedMultimodal's baseline) plain, with the same dropout
  and with the same unimodal loss, each seed; FedAvg's ``none`` cell is the mixture trained
  with neither; for each modality of the dataset (:data:`MODALITIES`), the federation trained
  without it (``missing-modality-devices=1``, ``missing-modality-name``), whose accuracy
  without it is what the other modalities reach alone under federated training; every other
  personalization with ours' training (``missing-personalized``); then ours and the baseline
  again with half the devices lacking a modality in all their data
  (``missing-modality-devices=0.5``);
* **DP** — DP-SGD at ε ∈ {8, 3, 1} (δ = 1e-5) on seven paths, each against the same path
  without DP: from scratch (``tcn`` encoders); fixed DP-friendly features
  (``sensor-encoder=features``: statistical and spectral window features, only a projection
  and the head trained); public pretraining (the last 2 subjects are consented donors,
  ``public-devices=2``: the server pretrains on their windows for 20 epochs, the 8 devices
  DP-fine-tune the heads, fusion and classifier only, ``fine-tune=top``; the donors are in no
  evaluation, so this path's central test has 8 subjects); public pretraining with DP-SGD's
  local epochs, learning rate and clipping bound chosen per ε on the donors' data
  (``public-tuned``, ``server/dp_tuning.py``), against the better of ``public`` without DP and
  the same tuned settings without DP; public pretraining with the classifier alone
  DP-fine-tuned (``public-head``, ``fine-tune=head``: 1,287 parameters against ``top``'s
  20,428); and ``public`` and ``public-head`` with the pretraining augmented by random frames
  (``public-reframed``, ``public-head-reframed``: ``pretrain-reframe=1``,
  ``server/public_pretraining.py``). DP cells run for every seed, each against its own seed's
  runs without DP; ``dp_time_ratio`` compares the runs' CPU seconds (one torch thread each),
  which the other worker does not inflate.

Figures (beside their targets):

* ``personalized_accuracy``: per personalization and baseline, the mean over devices of each
  device's accuracy on its own held-out windows with the model it predicts with
  (``final_device_accuracy`` of the run; local-only and centralized are scored the same way),
  mean over seeds; ``personalized_accuracy_best`` against the issue's 0.937 (central accuracy
  measured earlier with all 10 subjects, a different measure), and
  ``personalized_vs_centralized_points`` against this run's centralized model scored the same
  way (per device, own held-out windows);
* ``unseen_subject_accuracy``: per personalization, the 2 held-out subjects' accuracy after
  each fitted only its personal parameters (``server/unseen_devices.py``; ``none`` and
  ``ditto`` fit nothing), and ``unseen_subject_accuracy_head_fitted``: after each fitted the
  classifier head alone, the same adaptation for every method and the centralized model;
* ``missing_modality_drop_points``: worst accuracy drop (points) when one modality is removed
  at prediction time, on the central test (``models/missing_modality.py``), per variant of
  the missing part (the baseline also trained as ours and with dropout, so the fusion is
  compared apart from the training); target ours ≤ 3 and below the baseline;
  ``missing_modality_accuracy_without_worst``: per variant, the accuracy left with the worst
  modality removed (that of the drop); ``missing_modality_accuracy_trained_without``: per
  modality, the accuracy of the federation trained without it, on the others (the same
  removal);
  ``missing_modality_drop_points_half_devices_lacking``: the same after training with half
  the devices lacking a modality; ``missing_modality_drop_points_per_device``: per
  personalization, all trained as ours (``none``: ours itself), the worst drop of the
  models the devices predict with, on their own held-out windows, each device counting once
  (the run's ``final_device_missing_modality_drop_points``), with
  ``missing_modality_accuracy_per_device`` (``final_device_accuracy``) beside it;
* ``dp_accuracy_loss_points_eps{8,3,1}``: per path, central accuracy without DP minus with DP,
  mean over seeds (``..._per_seed`` beside it); targets ≤ 3 at ε = 8 and ≤ 6 at ε = 3 on the
  best path of those every seed measured; ``dp_accuracy_loss_points_against_best_nodp_eps*``:
  per seed, the best non-DP accuracy of the paths run minus the best DP accuracy at that ε (a
  path with a low ceiling loses little against itself, not against what training without DP
  reaches), mean over seeds; ``dp_time_ratio`` per path: the DP runs' mean CPU time over the
  same path's non-DP run (``public-tuned``: over its non-DP twins), mean over seeds; target
  ≤ 1.5 on the best path; ``dp_tuning_cpu_seconds``: the tuning's CPU time per ε, on public
  data before training, not in the ratio. Without ``personalization`` in ``--parts``, the
  ``scratch`` path brings its reference, FedAvg's run (``personalization=none``), for each seed.

``--workers`` runs cells in parallel processes (one torch thread each); every finished cell is
kept in ``<out>.cells.json`` and ``--merge`` summarizes earlier cells instead of running.
``--quick`` runs a tiny grid (2 rounds, 1 epoch, one seed).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from fedmosaic.config import RunConfig
from fedmosaic.data.absent_modalities import as_held
from fedmosaic.data.modality import MultimodalArrays
from fedmosaic.models.training import evaluate, make_loader, train
from fedmosaic.server.dp_tuning import as_report, tune_on_public_devices
from fedmosaic.server.unseen_devices import evaluate_unseen_devices
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import build_model, cached_dataset, loss_weights

NAME = "learning_quality"
PERSONALIZATIONS = ("none", "fedbn", "fedrep", "ditto", "local-gate")
EPSILONS = (8.0, 3.0, 1.0)
PRETRAIN_EPOCHS = 20
PUBLIC = {"unseen-devices": 0, "public-devices": 2, "pretrain-epochs": PRETRAIN_EPOCHS,
          "fine-tune": "top"}
PATHS: dict[str, dict[str, Any]] = {
    "scratch": {},
    "features": {"sensor-encoder": "features"},
    "public": PUBLIC,
    "public-tuned": PUBLIC,
    "public-head": {**PUBLIC, "fine-tune": "head"},
    "public-reframed": {**PUBLIC, "pretrain-reframe": 1.0},
    "public-head-reframed": {**PUBLIC, "fine-tune": "head", "pretrain-reframe": 1.0},
}
"""The DP paths: run-config overrides over the base (``scratch`` is the base itself).

``public-head`` is ``public`` with only the classifier DP-fine-tuned (``fine-tune=head``).
The ``-reframed`` paths pretrain on the donors' windows moved to random frames
(``pretrain-reframe=1``).

``public-tuned`` is ``public`` with DP-SGD's local epochs, learning rate and clipping bound
chosen per ε on the donors' data (``server/dp_tuning.py``) before its DP run; its reference is
the better of ``public`` without DP and the same tuned settings without DP."""
TUNED = "public-tuned"
CENTRALIZED_REFERENCE = 0.937
DP_TARGETS = {8.0: 3.0, 3.0: 6.0}
DP_TIME_TARGET = 1.5
MISSING_TARGET_POINTS = 3.0
OURS_MISSING = {"unimodal-loss-weight": 1.0}
"""Ours' training for missing modalities (the missing, missing-personalized and missing-half
parts)."""
MODALITIES = ("accelerometer", "gyroscope")
"""The modalities of :data:`BASE`'s dataset; the missing part trains a federation without each."""
MISSING_VARIANTS = {
    "ours": OURS_MISSING,
    "ours-dropout": {"modality-dropout": 0.5},
    "concat": {"fusion": "concat"},
    "concat-dropout": {"fusion": "concat", "modality-dropout": 0.5},
    "concat-unimodal": {"fusion": "concat", **OURS_MISSING},
    **{f"without-{name}": {"missing-modality-devices": 1.0, "missing-modality-name": name}
       for name in MODALITIES},
}
"""The missing part's cells: run-config overrides per variant."""
BASE = {"dataset": "smartwatch", "num-clients": 8, "unseen-devices": 2,
        "fraction-evaluate": 1.0, "risk-perception": False}


def cells_to_run(parts: list[str], seeds: list[int], epsilons: list[float],
                 dp_paths: list[str] | None = None) -> list[dict]:
    """The grid: one dict per cell (``part``, ``variant``, ``seed``, run-config ``overrides``).

    ``dp_paths`` picks the DP paths (default: every one of :data:`PATHS`); ``public-tuned``
    brings ``public``'s non-DP run, half of its reference.

    Ordered so that a cut-short invocation has whole figures: the first seed of every part,
    its DP at the first two ε (each DP run is the slowest cell), the other seeds' other parts,
    the first seed's DP at the remaining ε, then the other seeds' DP.
    """
    per_seed = []
    for seed in seeds:
        cells = []
        if "personalization" in parts:
            cells += [{"part": "personalization", "variant": p, "seed": seed,
                       "overrides": {"personalization": p}} for p in PERSONALIZATIONS]
            cells += [{"part": "personalization", "variant": v, "seed": seed, "overrides": {}}
                      for v in ("local-only", "centralized")]
        if "missing" in parts:
            cells += [{"part": "missing", "variant": variant, "seed": seed,
                       "overrides": overrides} for variant, overrides in MISSING_VARIANTS.items()]
        if "missing-personalized" in parts:  # FedAvg's is the missing part's ``ours`` cell
            if "missing" not in parts:
                cells.append({"part": "missing", "variant": "ours", "seed": seed,
                              "overrides": OURS_MISSING})
            cells += [{"part": "missing-personalized", "variant": p, "seed": seed,
                       "overrides": {"personalization": p, **OURS_MISSING}}
                      for p in PERSONALIZATIONS if p != "none"]
        if "missing-half" in parts:
            half = {"missing-modality-devices": 0.5}
            cells += [{"part": "missing-half", "variant": "ours", "seed": seed,
                       "overrides": {**half, **OURS_MISSING}},
                      {"part": "missing-half", "variant": "concat", "seed": seed,
                       "overrides": {**half, "fusion": "concat"}}]
        per_seed.append(cells)
    dp: list[list[dict]] = []
    if "dp" in parts:
        paths = {path: PATHS[path] for path in dp_paths or PATHS}
        referenced = {*paths, *(["public"] if TUNED in paths else [])}  # TUNED's reference
        for seed in seeds:
            cells = [{"part": "dp", "variant": f"{path}-nodp", "seed": seed, "overrides": extra}
                     for path, extra in PATHS.items()
                     if extra and path != TUNED and path in referenced]
            if "scratch" in paths and "personalization" not in parts:  # scratch's reference
                cells.append({"part": "personalization", "variant": "none", "seed": seed,
                              "overrides": {"personalization": "none"}})
            cells += [{"part": "dp", "variant": f"{path}-eps{eps:g}", "seed": seed,
                       "overrides": {**extra, "dp": True, "dp-epsilon-budget": eps}}
                      for eps in epsilons for path, extra in paths.items()]
            dp.append(cells)
    first_dp = dp[0] if dp else []
    early = len(first_dp) - (len(epsilons) - 2) * len(paths) if dp else 0  # non-DP, first 2 ε
    return [*per_seed[0], *first_dp[:early], *(c for cells in per_seed[1:] for c in cells),
            *first_dp[early:], *(c for cells in dp[1:] for c in cells)]


def cell_key(cell: dict[str, Any]) -> tuple[str, str, int, str]:
    """What makes two cells the same run: part, variant, seed and the overrides themselves.

    A merged cell of an earlier grid whose variant was trained differently is run again.
    """
    return (cell["part"], cell["variant"], cell["seed"],
            json.dumps(cell.get("overrides"), sort_keys=True))


def run_cell(cell: dict[str, Any], base: dict[str, Any], runs_dir: str) -> dict[str, Any]:
    """Run one cell (a federated run or a baseline) and return it with its figures."""
    torch.set_num_threads(1)
    overrides = {**base, **cell["overrides"], "seed": cell["seed"]}
    started, cpu_started = time.perf_counter(), time.process_time()
    if cell["variant"] in ("local-only", "centralized"):
        figures = baseline(RunConfig.from_mapping(overrides), cell["variant"])
    elif cell["variant"].startswith(f"{TUNED}-eps"):
        figures = tuned_cell(cell, overrides, runs_dir)
    else:
        figures = federated(overrides, f"{cell['part']}-{cell['variant']}-seed{cell['seed']}",
                            runs_dir)
    return {**cell, **figures, "base": base, "cell_seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started}


def federated(overrides: dict[str, Any], name: str, runs_dir: str) -> dict[str, Any]:
    """One in-process run: its summary's figures, CPU seconds included."""
    cpu_started = time.process_time()
    config = run_in_process({**overrides, "run-name": name, "out-dir": runs_dir})
    summary = json.loads((config.run_dir() / "summary.json").read_text())
    figures = {key: summary.get(key) for key in (
        "final_accuracy", "final_device_accuracy", "unseen_subject_accuracy",
        "unseen_subject_accuracy_head_fitted", "unseen_devices",
        "missing_modality_drop_points", "missing_modality",
        "final_device_missing_modality_drop_points", "wall_seconds")}
    figures |= removal_figures(summary)
    figures["epsilon_spent_max"] = max(
        (d["epsilon_spent"] for d in summary["privacy"].get("devices", {}).values()),
        default=None) if isinstance(summary.get("privacy"), dict) else None
    return {**figures, "run_cpu_seconds": time.process_time() - cpu_started}


def removal_figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """A run's accuracy with its worst modality removed and, trained without one, without it.

    ``accuracy_without_worst`` is the accuracy without the modality of
    ``missing_modality_drop_points`` (the largest drop); for a run whose devices all lacked
    ``missing-modality-name``, ``accuracy_without_trained_without`` is its accuracy without
    that modality: what the others reach alone.
    """
    removals = summary.get("missing_modality") or {}
    worst = max(removals.values(), default=None,
                key=lambda r: r["accuracy_with"] - r["accuracy_without"])
    lacking = summary["config"].get("missing-modality-name")
    trained_without = (removals[lacking]["accuracy_without"]
                       if lacking in removals
                       and summary["config"].get("missing-modality-devices") == 1.0 else None)
    return {"accuracy_without_worst": worst["accuracy_without"] if worst else None,
            "accuracy_without_trained_without": trained_without}


def tuned_cell(cell: dict[str, Any], overrides: dict[str, Any], runs_dir: str) -> dict[str, Any]:
    """Tune DP-SGD on the donors at the cell's ε, then the DP run and its non-DP twin."""
    config = RunConfig.from_mapping(overrides)
    started = time.process_time()
    tuning = as_report(tune_on_public_devices(config, cached_dataset(config)))
    tuning_seconds = time.process_time() - started
    tuned = {**overrides, **tuning["best"]}
    name = f"{cell['part']}-{cell['variant']}-seed{cell['seed']}"
    private = federated(tuned, name, runs_dir)
    plain = federated({**tuned, "dp": False}, f"{name}-nodp", runs_dir)
    return {**private, "tuning": tuning, "tuning_cpu_seconds": tuning_seconds,
            "reference_accuracy": plain["final_accuracy"],
            "reference_cpu_seconds": plain["run_cpu_seconds"]}


def baseline(config: RunConfig, variant: str) -> dict[str, Any]:
    """Local-only or centralized training on the devices' windows, scored like a run."""
    dataset = cached_dataset(config)
    devices = range(config.num_clients)
    epochs = config.num_server_rounds * config.local_epochs
    specs = dataset.specs

    def held(partition: int, split: int) -> MultimodalArrays:
        return as_held(config, dataset.partition(partition)[split], partition, specs)

    def fit(arrays: MultimodalArrays) -> torch.nn.Module:
        model = build_model(config, dataset)
        train(model, make_loader(arrays, specs, config.batch_size, shuffle=True,
                                 seed=config.seed), specs, epochs=epochs,
              learning_rate=config.learning_rate, weights=loss_weights(config))
        return model

    def accuracy(model: torch.nn.Module, arrays: MultimodalArrays) -> float:
        with torch.no_grad():
            return evaluate(model, make_loader(arrays, specs, 256, shuffle=False, seed=0),
                            specs).accuracy

    held_out = config.unseen_partitions
    if variant == "local-only":
        own = [accuracy(fit(held(p, 0)), held(p, 1)) for p in devices]
        return {"final_device_accuracy": float(np.mean(own))}
    model = fit(MultimodalArrays.concatenate([held(p, 0) for p in devices]))
    head_fitted = evaluate_unseen_devices(config, dataset, model.state_dict(), fit="head")
    return {
        "unseen_subject_accuracy_head_fitted": float(np.mean(list(head_fitted.values()))),
        "final_accuracy": accuracy(model, dataset.central_test_without(
            config.public_partitions)),
        "final_device_accuracy": float(np.mean([accuracy(model, held(p, 1))
                                                for p in devices])),
        "unseen_subject_accuracy": float(np.mean([accuracy(model, dataset.partition(p)[1])
                                                  for p in held_out])),
    }


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures (module docstring) from the finished cells."""

    def mean(part: str, variant: str, key: str) -> float | None:
        values = [c[key] for c in cells if c["part"] == part and c["variant"] == variant
                  and c.get(key) is not None]
        return float(np.mean(values)) if values else None

    figures: dict[str, Any] = {}
    personalized = {v: mean("personalization", v, "final_device_accuracy")
                    for v in (*PERSONALIZATIONS, "local-only", "centralized")}
    personalized = {k: v for k, v in personalized.items() if v is not None}
    figures["personalized_accuracy"] = personalized
    ours = {k: v for k, v in personalized.items() if k in PERSONALIZATIONS and k != "none"}
    if ours:
        best = max(ours, key=ours.__getitem__)
        figures["personalized_accuracy_best"] = ours[best]
        figures["personalized_accuracy_best_method"] = best
        figures["personalized_accuracy_target"] = CENTRALIZED_REFERENCE
        figures["personalized_accuracy_target_met"] = ours[best] >= CENTRALIZED_REFERENCE
        central = personalized.get("centralized")
        figures["personalized_accuracy_centralized_this_run"] = central
        figures["personalized_vs_centralized_points"] = (
            100.0 * (ours[best] - central) if central is not None else None)
    figures["unseen_subject_accuracy"] = {
        v: u for v in (*PERSONALIZATIONS, "centralized")
        if (u := mean("personalization", v, "unseen_subject_accuracy")) is not None}
    figures["unseen_subject_accuracy_head_fitted"] = {
        v: u for v in (*PERSONALIZATIONS, "centralized")
        if (u := mean("personalization", v, "unseen_subject_accuracy_head_fitted")) is not None}
    half = {"ours": mean("missing-half", "ours", "missing_modality_drop_points"),
            "concat_baseline": mean("missing-half", "concat", "missing_modality_drop_points")}
    if half["ours"] is not None:
        figures["missing_modality_drop_points_half_devices_lacking"] = half
        figures["missing_modality_accuracy_half_devices_lacking"] = {
            "ours": mean("missing-half", "ours", "final_accuracy"),
            "concat_baseline": mean("missing-half", "concat", "final_accuracy")}
    compared = {"ours": ("missing", "ours"), "ours_dropout": ("missing", "ours-dropout"),
                "concat_baseline": ("missing", "concat"),
                "concat_with_dropout": ("missing", "concat-dropout"),
                "concat_with_unimodal": ("missing", "concat-unimodal"),
                "moe_plain": ("personalization", "none")}
    missing = {key: mean(*cell, "missing_modality_drop_points")
               for key, cell in compared.items()}
    if missing["ours"] is not None:
        figures["missing_modality_drop_points"] = missing
        figures["missing_modality_accuracy"] = {
            key: mean(*cell, "final_accuracy") for key, cell in compared.items()}
        figures["missing_modality_accuracy_without_worst"] = {
            key: mean(*cell, "accuracy_without_worst") for key, cell in compared.items()}
        figures["missing_modality_accuracy_trained_without"] = {
            name: mean("missing", f"without-{name}", "accuracy_without_trained_without")
            for name in MODALITIES}
        figures["missing_modality_target_points"] = MISSING_TARGET_POINTS
        figures["missing_modality_target_met"] = (
            missing["ours"] <= MISSING_TARGET_POINTS
            and (missing["concat_baseline"] is None
                 or missing["ours"] < missing["concat_baseline"]))

    def per_device(key: str) -> dict[str, float | None]:
        return {p: mean("missing", "ours", key) if p == "none"
                else mean("missing-personalized", p, key) for p in PERSONALIZATIONS}

    drops = per_device("final_device_missing_modality_drop_points")
    drops = {p: drop for p, drop in drops.items() if drop is not None}
    if drops:
        figures["missing_modality_drop_points_per_device"] = drops
        accuracy = per_device("final_device_accuracy")
        figures["missing_modality_accuracy_per_device"] = {p: accuracy[p] for p in drops}
    figures.update(dp_figures(cells))
    return figures


def dp_figures(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """``dp_accuracy_loss_points_eps*`` and ``dp_time_ratio`` per path, with their targets.

    Each seed's DP runs are measured against the same seed's runs without DP; the figures are
    the means over the seeds that have both (``..._per_seed`` lists each seed's, ``None`` where
    a seed lacks the path).
    """
    seeds = sorted({c["seed"] for c in cells if c["part"] == "dp"})
    if not seeds:
        return {}
    timed = all(c.get("cpu_seconds") is not None for c in cells if c["part"] == "dp")
    clock = "cpu_seconds" if timed else "wall_seconds"  # CPU time: immune to the other worker
    per_seed = [dp_seed_figures(cells, seed, clock) for seed in seeds]
    figures: dict[str, Any] = {"dp_seeds": seeds}
    for eps in EPSILONS:
        losses = [found["losses"].get(eps, {}) for found in per_seed]
        if any(losses):
            key = f"dp_accuracy_loss_points_eps{eps:g}"
            figures[key], figures[f"{key}_per_seed"] = across_seeds(losses)
            if eps in DP_TARGETS:  # on the paths that every seed measured
                complete = [loss for path, loss in figures[key].items()
                            if None not in figures[f"{key}_per_seed"][path]]
                figures[f"{key}_target"] = DP_TARGETS[eps]
                figures[f"{key}_target_met"] = bool(complete) and min(complete) <= DP_TARGETS[eps]
            against_best = [found["loss_against_best"].get(eps) for found in per_seed]
            best_key = f"dp_accuracy_loss_points_against_best_nodp_eps{eps:g}"
            figures[best_key] = float(np.mean([a for a in against_best if a is not None]))
            figures[f"{best_key}_per_seed"] = against_best
    ratios = [found["ratios"] for found in per_seed]
    if any(ratios):
        figures["dp_time_ratio"], figures["dp_time_ratio_per_seed"] = across_seeds(ratios)
        figures["dp_time_ratio_clock"] = clock
        figures["dp_time_ratio_target"] = DP_TIME_TARGET
    tuning = [t for found in per_seed for t in found["tuning_cpu_seconds"]]
    if tuning:  # once per ε, on public data, before training
        figures["dp_tuning_cpu_seconds"] = float(np.mean(tuning))
    accuracies = [{c["variant"]: c["final_accuracy"] for c in cells
                   if c["part"] == "dp" and c["seed"] == seed
                   and c.get("final_accuracy") is not None} for seed in seeds]
    figures["dp_accuracy"], figures["dp_accuracy_per_seed"] = across_seeds(accuracies)
    return figures


def across_seeds(per_seed: list[dict[str, float]]) -> tuple[dict[str, float],
                                                          dict[str, list[float | None]]]:
    """Per key (in first-seen order): the mean over the seeds' dicts that have it, and each
    seed's value (``None`` where a seed lacks it)."""
    keys = list(dict.fromkeys(key for found in per_seed for key in found))
    means = {key: float(np.mean([found[key] for found in per_seed if key in found]))
             for key in keys}
    return means, {key: [found.get(key) for found in per_seed] for key in keys}


def dp_seed_figures(cells: list[dict[str, Any]], seed: int, clock: str) -> dict[str, Any]:
    """One seed's DP losses (points, per ε and path), time ratios and tuning CPU seconds."""
    no_dp = {path: ("dp", f"{path}-nodp") for path in PATHS if path != TUNED}
    no_dp["scratch"] = ("personalization", "none")

    def one(part: str, variant: str, key: str) -> float | None:
        found = [c[key] for c in cells if (c["part"], c["variant"], c["seed"]) ==
                 (part, variant, seed) and c.get(key) is not None]
        return found[0] if found else None

    losses: dict[float, dict[str, float]] = {}
    best_private: dict[float, float] = {}  # the best DP accuracy at each ε, over the paths
    plains = [one(*no_dp[path], "final_accuracy") for path in no_dp] + [
        one("dp", f"{TUNED}-eps{eps:g}", "reference_accuracy") for eps in EPSILONS]
    best_plain = max((a for a in plains if a is not None), default=None)  # over every path run
    for eps in EPSILONS:
        for path in PATHS:
            private = one("dp", f"{path}-eps{eps:g}", "final_accuracy")
            if path == TUNED:  # the better of public's and the tuned settings' non-DP runs
                found = [one("dp", f"{path}-eps{eps:g}", "reference_accuracy"),
                         one(*no_dp["public"], "final_accuracy")]
                found = [a for a in found if a is not None]
                plain = max(found) if found else None
            else:
                plain = one(*no_dp[path], "final_accuracy")
            if plain is not None and private is not None:
                losses.setdefault(eps, {})[path] = 100.0 * (plain - private)
                best_private[eps] = max(best_private.get(eps, 0.0), private)
    ratios: dict[str, float] = {}
    for path in PATHS:
        if path == TUNED:  # each DP run against its non-DP twin (same settings), CPU time
            pairs = [(one("dp", f"{path}-eps{eps:g}", "run_cpu_seconds"),
                      one("dp", f"{path}-eps{eps:g}", "reference_cpu_seconds"))
                     for eps in EPSILONS]
            pairs = [(p, q) for p, q in pairs if p and q]
            if pairs:
                private, plain = zip(*pairs, strict=True)
                ratios[path] = float(np.mean(private) / np.mean(plain))
            continue
        plain = one(*no_dp[path], clock)
        private = [one("dp", f"{path}-eps{eps:g}", clock) for eps in EPSILONS]
        private = [p for p in private if p is not None]
        if plain and private:
            ratios[path] = float(np.mean(private)) / plain
    tuning = [one("dp", f"{TUNED}-eps{eps:g}", "tuning_cpu_seconds") for eps in EPSILONS]
    return {"losses": losses, "ratios": ratios,
            "loss_against_best": {eps: 100.0 * (best_plain - a) for eps, a in best_private.items()
                                  if best_plain is not None},
            "tuning_cpu_seconds": [t for t in tuning if t is not None]}


def main() -> None:
    """Run the grid (or merge earlier cells), write and print the figures."""
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds (default: 0 1 2; 0 with --quick)")
    parser.add_argument("--parts", nargs="+",
                        default=["personalization", "missing", "missing-personalized",
                                 "missing-half", "dp"],
                        choices=["personalization", "missing", "missing-personalized",
                                 "missing-half", "dp"])
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--dp-paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                        help="the DP paths to run (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="cells run in parallel")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="start from the cells of earlier `.cells.json` files; only the "
                             "cells of the grid they lack are run")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    base = {**BASE, **common.run_overrides(args)}
    if args.quick:
        base.update({"num-server-rounds": 2, "local-epochs": 1})
    runs_dir = common.run_folder(NAME, args.runs_dir)
    partial = args.out.with_suffix(".cells.json")
    cells = [c for path in args.merge or () for c in json.loads(path.read_text())["cells"]]
    settings = json.dumps(base, sort_keys=True)  # merged cells count only under the same base
    cells = [c for c in cells if json.dumps(c.get("base"), sort_keys=True) == settings]
    done_keys = {cell_key(c) for c in cells}
    todo = [c for c in cells_to_run(args.parts, seeds, args.epsilons, args.dp_paths)
            if cell_key(c) not in done_keys]
    if todo:
        print(f"{NAME}: {len(todo)} cells on {args.workers} workers; runs in {runs_dir}",
              flush=True)
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers, maxtasksperchild=1) as pool:
            pending = [pool.apply_async(run_cell, (cell, base, str(runs_dir))) for cell in todo]
            for job in pending:
                cells.append(job.get())
                done = cells[-1]
                print(f"{done['part']} {done['variant']} seed {done['seed']}: device "
                      f"{done.get('final_device_accuracy')}, central "
                      f"{done.get('final_accuracy')}, {done['cell_seconds']:.0f} s", flush=True)
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps({"cells": cells}) + "\n")
    figures = summarize(cells)
    common.print_table(NAME, [(k, v) for k, v in figures.items()])
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"personalization": "FedAvg (personalization=none), local-only and "
                                     "centralized training of the same model, same epochs",
                  "missing": "zero-filled concatenation (fusion=concat)",
                  "dp": "the same path without DP"},
        config={"seeds": seeds, "parts": args.parts, "epsilons": args.epsilons,
                "dp_paths": args.dp_paths, **base},
        cells=cells)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
