"""Privacy versus utility on the smartwatch data: accuracy under DP-SGD and what attacks recover.

Claims (targets from the privacy issue):
    * ``accuracy_loss_points_eps8`` <= 2 and ``accuracy_loss_points_eps3`` <= 5: central
      accuracy of federated training with per-client DP-SGD at ε = 8 and ε = 3 (δ = 1e-5) is
      within that many points of the same run without DP (ε = ∞);
    * ``mia_auc_eps8`` <= 0.55: membership inference against the ε = 8 global model is close
      to chance (the stronger of the loss-threshold attack and offline LiRA);
    * ``inversion_psnr_drop_db`` >= 10: gradient inversion of one client's update loses at
      least 10 dB of PSNR when the update is a DP-SGD update at ε = 8's noise multiplier;
    * ``dp_time_ratio`` <= 1.5: the ClientApp's local training with DP-SGD takes at most 1.5x
      the time of non-private local training.

Model: every part runs on one model configuration, ``--model``. ``dp`` (the default) is
:data:`DP_MODEL`, the configuration the README recommends for DP-SGD: the fixed-feature sensor
encoder (``sensor-encoder=features``, Tramèr & Boneh 2021) and small embeddings, 2,234
trainable parameters instead of 38,092, with batch 64 and step size 0.01; ``default`` is the
run config's defaults (the TCN encoders). DP-SGD's noise has norm σC√d for d trainable
parameters, which is why the choice matters (README, "Privacy").

Method:
    * Accuracy: fedmosaic's real ServerApp and ClientApp run in-process
      (``fedmosaic.simulation.inprocess.run_in_process``), smartwatch, 10 clients (one per
      subject), once per ε in {1, 3, 8, ∞} with ``dp=true dp-epsilon-budget=ε delta=1e-5`` (ε = ∞:
      ``dp=false``), same seed and every other key at its default.
    * Membership inference on each run's final checkpoint: members are a random subset of the
      pooled training windows, non-members an equal number of held-out windows (half of the
      central test set); the other half of the central test set trains the LiRA shadow models
      (disjoint from every candidate, as offline LiRA requires). Loss-threshold and LiRA AUC
      and TPR at 1 % and 0.1 % FPR (``fedmosaic.privacy.attacks.membership``).
    * Gradient inversion (``fedmosaic.privacy.attacks.inversion``): Inverting Gradients
      against the update of a one-window step of client 0 on the initial global model, for
      several windows, without DP and as a DP-SGD update (clip norm C, noise multiplier σ
      calibrated by ``fedmosaic.privacy.accounting`` (RDP) for ε = 8, δ = 1e-5, client 0's
      Poisson sampling rate and the run's planned steps, as the ClientApp does). The figure is
      the difference of mean PSNRs; the PSNR of guessing the data mean (zeros) is reported as
      the no-information reference, and the error of the recovered per-channel means and
      standard deviations as what the update leaks besides the waveform.
    * Re-identification (``fedmosaic.privacy.attacks.attribute``): subject from the global
      model's shared embeddings (train windows -> held-out windows) at ε = ∞ and ε = 8; and
      linkage of telemetry releases (summaries of two random halves of each device's windows)
      raw versus released with the bounded Laplace mechanism at ``telemetry-epsilon`` per field.
    * Time: the ClientApp's ``train`` handler on client 0 with ``dp=true`` (ε = 8) versus
      ``dp=false``, same message and data, alternated, median of the repeats (fresh context
      each call, so no budget runs out).

Baseline (same run): the ε = ∞ run for accuracy, MIA and re-identification; the non-DP update
for inversion; non-private local training for time; raw telemetry for linkage.

Run: ``python benchmarks/privacy_utility.py [--quick] [--model dp|default] [--rounds R]
[--local-epochs E] [--seed S] [--out FILE]``. Quick mode (1 round x 1 local epoch, fewer
attack repeats) only checks that everything runs; its figures are not the claims. Nothing is
asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients.app import train_locally
from fedmosaic.config import RunConfig, default_run_config
from fedmosaic.data.modality import MultimodalArrays
from fedmosaic.privacy.accounting import calibrate_noise_multiplier, poisson_plan
from fedmosaic.privacy.attacks.attribute import link_releases
from fedmosaic.privacy.attacks.inversion import (
    invert_sample,
    reconstruction_quality,
    sensor_target,
)
from fedmosaic.privacy.attacks.membership import (
    lira_attack,
    loss_threshold_attack,
    train_shadow_models,
)
from fedmosaic.privacy.attacks.run import embedding_reidentification, load_checkpoint
from fedmosaic.privacy.telemetry import (
    TelemetryLedger,
    release_telemetry,
    sensor_fields,
    sensor_readings,
)
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import build_model, cached_dataset, loss_weights

NAME = "privacy_utility"
EPSILONS = (1.0, 3.0, 8.0, math.inf)
DELTA = 1e-5
DP_KEYS = ("dp", "dp-epsilon-budget", "delta")
CLIP_KEYS = ("max-grad-norm", "clip-norm", "dp-clip-norm")
DEFAULT_CLIP_NORM = 1.0
TARGETS = {"accuracy_loss_points_eps8": ("<=", 2.0), "accuracy_loss_points_eps3": ("<=", 5.0),
           "mia_auc_eps8": ("<=", 0.55), "inversion_psnr_drop_db": (">=", 10.0),
           "dp_time_ratio": ("<=", 1.5)}
QUICK = {"rounds": 1, "local_epochs": 1, "inversion_windows": 2, "inversion_iterations": 100,
         "shadow_models": 2, "shadow_epochs": 2, "time_repeats": 2, "linkage_repeats": 10}
DP_MODEL = {"sensor-encoder": "features", "hidden-dim": 16, "embed-dim": 8, "num-experts": 1,
            "batch-size": 64, "learning-rate": 0.01}
"""``--model dp``: run-config keys of the DP-SGD configuration (module docstring)."""
MODELS = {"dp": DP_MODEL, "default": {}}
FULL = {"inversion_windows": 8, "inversion_iterations": 400, "shadow_models": 4,
        "shadow_epochs": 20, "time_repeats": 5, "linkage_repeats": 50}


def dp_available() -> bool:
    """Whether the run config has the DP-SGD keys (``dp``, ``dp-epsilon-budget``, ``delta``)."""
    return all(key in default_run_config() for key in DP_KEYS)


def dp_overrides(epsilon: float) -> dict[str, Any]:
    """Run-config keys for per-client DP-SGD at ``epsilon`` (∞: no DP)."""
    if math.isinf(epsilon):
        return {"dp": False} if dp_available() else {}
    return {"dp": True, "dp-epsilon-budget": epsilon, "delta": DELTA}


def clip_norm() -> float:
    """DP-SGD's clipping bound from the run config, or 1.0 if it has none."""
    defaults = default_run_config()
    return float(next((defaults[k] for k in CLIP_KEYS if k in defaults), DEFAULT_CLIP_NORM))


def label(epsilon: float) -> str:
    """``eps8``, ``eps_inf``, ..."""
    return "eps_inf" if math.isinf(epsilon) else f"eps{epsilon:g}"


def federated_runs(base: dict[str, Any], runs_dir: Path, with_dp: bool
                   ) -> dict[str, dict[str, Any]]:
    """One in-process run per ε (only ε = ∞ unless ``with_dp``); accuracy and run folder."""
    runs = {}
    for epsilon in EPSILONS:
        if not (math.isinf(epsilon) or with_dp):
            continue
        print(f"federated run at {label(epsilon)} ...", flush=True)
        started = time.perf_counter()
        config = run_in_process({**base, **dp_overrides(epsilon), "out-dir": str(runs_dir),
                                 "run-name": label(epsilon)})
        summary = json.loads((config.run_dir() / "summary.json").read_text())
        runs[label(epsilon)] = {
            "epsilon": None if math.isinf(epsilon) else epsilon,
            "accuracy": summary["final_accuracy"],
            "accuracy_per_round": [row["accuracy"] for row in summary["history"]],
            "privacy": summary.get("privacy"),
            "run_dir": str(config.run_dir()),
            "wall_seconds": time.perf_counter() - started,
        }
    return runs


def membership(runs: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Loss-threshold and offline-LiRA membership inference on every run's final model."""
    results: dict[str, Any] = {}
    shadows = None
    for name, run in runs.items():
        config, dataset, model, _ = load_checkpoint(Path(run["run_dir"]))
        test = dataset.central_test()
        order = np.random.default_rng(config.seed).permutation(len(test))
        non_members = test.subset(np.sort(order[: len(test) // 2]))
        shadow_pool = test.subset(np.sort(order[len(test) // 2:]))
        pooled = MultimodalArrays.concatenate(
            [dataset.partition(p)[0] for p in range(config.num_clients)])
        members = pooled.subset(np.sort(np.random.default_rng(config.seed + 1).choice(
            len(pooled), len(non_members), replace=False)))
        if shadows is None:
            print("training LiRA shadow models ...", flush=True)
            shadows = train_shadow_models(
                lambda config=config, dataset=dataset: build_model(config, dataset),
                shadow_pool, dataset.specs, count=settings["shadow_models"],
                epochs=settings["shadow_epochs"], batch_size=config.batch_size,
                learning_rate=config.learning_rate, weights=loss_weights(config),
                seed=config.seed)
        results[name] = {
            "loss_threshold": vars(loss_threshold_attack(model, members, non_members,
                                                         dataset.specs)),
            "lira_offline": vars(lira_attack(model, shadows, members, non_members,
                                             dataset.specs)),
            "reidentification_from_embeddings": embedding_reidentification(config, dataset,
                                                                           model),
        }
    return results


def inversion(config: RunConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """Inverting Gradients on client 0's one-window updates, without and with DP-SGD."""
    dataset = cached_dataset(config)
    arrays, _ = dataset.partition(0)
    model = build_model(config, dataset)
    sample_rate, _, steps = poisson_plan(len(arrays), config.batch_size, config.local_epochs,
                                         config.num_server_rounds)
    sigma = calibrate_noise_multiplier(8.0, DELTA, sample_rate, steps)
    bound = clip_norm()
    # DP-SGD drops the batch-coupled balance term (fedmosaic.privacy.dp_sgd); so does its update
    dp_weights = dataclasses.replace(loss_weights(config), balance=0.0)
    windows = np.random.default_rng(config.seed).choice(len(arrays),
                                                        settings["inversion_windows"],
                                                        replace=False)
    rows = []
    for index in windows:
        print(f"inverting window {index} ...", flush=True)
        inputs, _, _ = sensor_target(arrays, dataset.specs, int(index))
        uninformed = reconstruction_quality(inputs, {k: torch.zeros_like(v)
                                                     for k, v in inputs.items()})[1]
        plain = invert_sample(model, arrays, dataset.specs, int(index), loss_weights(config),
                              iterations=settings["inversion_iterations"], seed=int(index))
        private = invert_sample(model, arrays, dataset.specs, int(index), dp_weights,
                                clip_norm=bound, noise_multiplier=sigma,
                                iterations=settings["inversion_iterations"], seed=int(index))
        rows.append({"window": int(index), "psnr_no_dp": plain.psnr_db,
                     "psnr_dp": private.psnr_db, "mse_no_dp": plain.mse, "mse_dp": private.mse,
                     "stats_error_no_dp": plain.channel_statistics_error,
                     "stats_error_dp": private.channel_statistics_error,
                     "cosine_no_dp": plain.gradient_cosine_distance,
                     "cosine_dp": private.gradient_cosine_distance,
                     "psnr_uninformed": uninformed})
    return {
        "noise_multiplier_eps8": sigma, "clip_norm": bound, "sample_rate": sample_rate,
        "steps": steps, "windows": rows,
        "mean_psnr_no_dp": float(np.mean([r["psnr_no_dp"] for r in rows])),
        "mean_psnr_dp": float(np.mean([r["psnr_dp"] for r in rows])),
        "mean_psnr_uninformed": float(np.mean([r["psnr_uninformed"] for r in rows])),
        "mean_stats_error_no_dp": float(np.mean([r["stats_error_no_dp"] for r in rows])),
        "mean_stats_error_dp": float(np.mean([r["stats_error_dp"] for r in rows])),
    }


def telemetry_linkage(config: RunConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """Link two telemetry releases per device: raw summaries versus bounded-Laplace releases."""
    dataset = cached_dataset(config)
    fields = sensor_fields(dataset.specs, config.telemetry_bound, config.telemetry_epsilon,
                           config.telemetry_budget)
    rng = np.random.default_rng(config.seed)
    raw, private = [], []
    for _ in range(settings["linkage_repeats"]):
        halves: list[list[dict[str, float]]] = [[], []]
        for partition in range(config.num_clients):
            arrays, _ = dataset.partition(partition)
            order = rng.permutation(len(arrays))
            for half, index in enumerate((order[: len(order) // 2], order[len(order) // 2:])):
                halves[half].append(sensor_readings(arrays.subset(np.sort(index)),
                                                    dataset.specs))
        names = [f.name for f in fields]
        as_matrix = [np.array([[r[n] for n in names] for r in half]) for half in halves]
        raw.append(link_releases(*as_matrix).accuracy)
        noisy = [np.array([[release_telemetry(r, fields, TelemetryLedger(), rng).values[n]
                            for n in names] for r in half]) for half in halves]
        private.append(link_releases(*noisy).accuracy)
    return {"raw_accuracy": float(np.mean(raw)), "ldp_accuracy": float(np.mean(private)),
            "chance": 1.0 / config.num_clients, "fields": len(fields),
            "epsilon_per_field": config.telemetry_epsilon,
            "epsilon_per_release": config.telemetry_epsilon * len(fields),
            "repeats": settings["linkage_repeats"]}


def local_training_times(config: RunConfig, repeats: int) -> dict[str, Any]:
    """ClientApp ``train`` on client 0, DP-SGD (ε = 8) and not, alternated.

    Each DP reply's ``dp-epsilon-spent`` metric is kept: it shows the ClientApp applied DP-SGD.
    """
    dataset = cached_dataset(config)
    arrays = ArrayRecord(build_model(config, dataset).state_dict())
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    times: dict[str, list[float]] = {"dp": [], "plain": []}
    dp_epsilon_spent: list[float] = []
    for _ in range(repeats):
        for mode, epsilon in (("plain", math.inf), ("dp", 8.0)):
            run_config = RunConfig.from_mapping({**config.to_mapping(),
                                                 **dp_overrides(epsilon)}).to_mapping()
            context = Context(run_id=1, node_id=1, node_config={records.PARTITION_ID: 0},
                              state=RecordDict(), run_config=run_config)
            content = RecordDict({records.ARRAYS: arrays, records.CONFIG: ConfigRecord(
                {records.SERVER_ROUND: 1, records.LEARNING_RATE: config.learning_rate})})
            message = Message(content=content, dst_node_id=1, message_type="train")
            started = time.perf_counter()
            reply = train_locally(message, context)
            times[mode].append(time.perf_counter() - started)
            if reply.has_error():
                raise RuntimeError(f"{mode} local training failed: {reply.error}")
            if mode == "dp":
                dp_epsilon_spent.append(float(reply.content[records.METRICS].get(
                    records.DP_EPSILON_SPENT, 0.0)))
    return {"dp_seconds": times["dp"], "plain_seconds": times["plain"],
            "dp_epsilon_spent_per_call": dp_epsilon_spent,
            "dp_median": common.median(times["dp"]),
            "plain_median": common.median(times["plain"]), "repeats": repeats}


def main() -> None:
    """Parse arguments, run everything, write and print the figures."""
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--rounds", type=int, default=None,
                        help="server rounds (default: pyproject's num-server-rounds; "
                             f"{QUICK['rounds']} with --quick)")
    parser.add_argument("--model", choices=sorted(MODELS), default="dp",
                        help="model configuration of every part (module docstring)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    base: dict[str, Any] = {"dataset": "smartwatch", "num-clients": 10, **MODELS[args.model],
                            **common.run_overrides(args)}
    if args.quick:
        base.setdefault("local-epochs", QUICK["local_epochs"])
    if args.rounds is not None or args.quick:
        base["num-server-rounds"] = args.rounds or QUICK["rounds"]
    config = RunConfig.from_mapping(base)
    runs_dir = common.run_folder(NAME, args.runs_dir)
    missing = [] if dp_available() else [
        f"run-config keys {list(DP_KEYS)} are not defined: DP-SGD runs, their accuracy and "
        "MIA figures and dp_time_ratio were not measured"]
    print(f"{NAME}: {config.num_server_rounds} rounds x {config.local_epochs} local epoch(s), "
          f"seed {config.seed}; run folders in {runs_dir}", flush=True)

    timing = (local_training_times(config, settings["time_repeats"]) if dp_available()
              else None)
    dp_applied = timing is not None and min(timing["dp_epsilon_spent_per_call"]) > 0.0
    if timing is not None and not dp_applied:
        missing.append("the ClientApp's replies with dp=true report no dp-epsilon-spent: "
                       "DP-SGD is not applied, so no DP figure is reported")
        timing = None
    runs = federated_runs(base, runs_dir, with_dp=dp_applied)
    attacks = membership(runs, settings)
    inverted = inversion(config, settings)
    linkage = telemetry_linkage(config, settings)

    def accuracy_loss(name: str) -> float | None:
        if name not in runs:
            return None
        return 100.0 * (runs["eps_inf"]["accuracy"] - runs[name]["accuracy"])

    def strongest_auc(name: str) -> float | None:
        if name not in attacks:
            return None
        return max(attacks[name]["loss_threshold"]["auc"], attacks[name]["lira_offline"]["auc"])

    def strongest_tpr(name: str) -> float | None:
        if name not in attacks:
            return None
        return max(attacks[name]["loss_threshold"]["tpr_at_01pct_fpr"],
                   attacks[name]["lira_offline"]["tpr_at_01pct_fpr"])

    figures: dict[str, Any] = {
        **{f"accuracy_{name}": run["accuracy"] for name, run in runs.items()},
        "accuracy_loss_points_eps8": accuracy_loss("eps8"),
        "accuracy_loss_points_eps3": accuracy_loss("eps3"),
        "accuracy_loss_points_eps1": accuracy_loss("eps1"),
        "mia_auc_eps8": strongest_auc("eps8"),
        "mia_auc_eps_inf": strongest_auc("eps_inf"),
        "mia_tpr_at_01pct_fpr_eps8": strongest_tpr("eps8"),
        "mia_tpr_at_01pct_fpr_eps_inf": strongest_tpr("eps_inf"),
        "inversion_psnr_no_dp_db": inverted["mean_psnr_no_dp"],
        "inversion_psnr_dp_eps8_db": inverted["mean_psnr_dp"],
        "inversion_psnr_uninformed_db": inverted["mean_psnr_uninformed"],
        "inversion_psnr_drop_db": inverted["mean_psnr_no_dp"] - inverted["mean_psnr_dp"],
        "inversion_channel_stats_error_no_dp": inverted["mean_stats_error_no_dp"],
        "inversion_channel_stats_error_dp_eps8": inverted["mean_stats_error_dp"],
        **{f"reidentification_accuracy_{name}": a["reidentification_from_embeddings"]["accuracy"]
           for name, a in attacks.items()},
        "reidentification_chance": attacks["eps_inf"]["reidentification_from_embeddings"][
            "chance"],
        "telemetry_linkage_raw": linkage["raw_accuracy"],
        "telemetry_linkage_ldp": linkage["ldp_accuracy"],
        "dp_time_ratio": common.ratio(timing["dp_median"], timing["plain_median"])
        if timing else None,
    }
    met = {name: (None if figures.get(name) is None else
                  (figures[name] <= bound if op == "<=" else figures[name] >= bound))
           for name, (op, bound) in TARGETS.items()}
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"what": "same run without DP (eps_inf) for accuracy, MIA and "
                          "re-identification; the non-DP update for inversion; non-private "
                          "local training for time; raw summaries for telemetry linkage",
                  "eps_inf": runs["eps_inf"],
                  "plain_local_training_seconds": timing["plain_median"] if timing else None,
                  "telemetry_linkage_raw": linkage["raw_accuracy"]},
        config={"model": args.model, "rounds": config.num_server_rounds,
                "local_epochs": config.local_epochs,
                "seed": config.seed, "delta": DELTA, "epsilons": [label(e) for e in EPSILONS],
                "settings": settings, "run_config": config.to_mapping()},
        targets={name: f"{op} {bound}" for name, (op, bound) in TARGETS.items()},
        targets_met=met, missing=missing, runs=runs,
        membership=attacks, inversion=inverted, telemetry_linkage=linkage, timing=timing,
    )
    common.print_table(f"{NAME} ({config.num_server_rounds} rounds)",
                       [(name, value) for name, value in figures.items()])
    for line in missing:
        print(f"not measured: {line}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
