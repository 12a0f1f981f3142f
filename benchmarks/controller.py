"""Every controller policy on the same real runs: utility, leakage, ε spent, overhead.

For each dataset (smartwatch, synthetic), scenario seed and cap ε ∈ {1, 3, 8} (δ = 1e-5), one
in-process Flower run with DP-SGD per policy (``static``, ``linear``, ``exponential``,
``alpine``, ``bandit``, ``ddpg``, ``td3``, the two TD3 ablations: ``td3-discount-0``, trained
with γ = 0, and ``td3-no-risk``, trained without the risk input; and ``none``, the
non-adaptive even plan under the tighter RDP accountant, which needs no filter). Every other
seed is a risk-shift scenario: attackers (reply bursts, a channel anomaly) appear in the middle
of the run. After each run the real attacks run on its final model (``privacy/attacks``):
re-identification of the device from the embeddings and loss-threshold membership inference
(TPR at 0.1 % FPR); ε spent is the ledger's; the controller's overhead is its decision time per
round over the round's wall time.

Figures (each beside its target where the issue set one):

* ``td3_dominates_static_share``: share of (dataset, seed, cap) scenarios where TD3's
  (accuracy, re-identification) point is at least as good on both axes and better on one than
  the static policy's at *every* cap (target ≥ 0.8); ``td3_dominates_static_same_cap_share``:
  the same against static at the same cap only;
* ``td3_vs_best_baseline``: interquartile mean (rliable) of the per-scenario difference of the
  score ``accuracy − (re-identification − chance)`` between TD3 and the best simple policy,
  with its 95 % bootstrap interval;
* ``hypervolume_<policy>``: hypervolume (pymoo) of each policy's front of (accuracy,
  re-identification) points, one per cap (mean over scenarios), against reference (0, 1);
* ``best_policy``: the policy with the highest score IQM (the default should be it).

Beside the figures over every cell, ``by_dataset`` and ``by_risk_shift`` hold the same figures
over each dataset's cells and over the scenarios with and without attackers, and
``epsilon_spent_share_<policy>`` is the mean over cells of the largest device spend over the cap.

``python benchmarks/controller.py`` is the full grid: 10 seeds, both datasets, every policy, the
three caps, 600 runs of 4 devices × 5 rounds × 1 local epoch (about 8.5 s a run with one thread,
so about 85 minutes). Shards run in parallel, each with ``OMP_NUM_THREADS=1`` and its own
``--out``, e.g. ``--datasets smartwatch --seeds 5 --out benchmarks/results/sw-0.json`` and
``--datasets smartwatch --seeds 5 --first-seed 5 --out benchmarks/results/sw-5.json``;
``--merge`` joins their JSON (it refuses a cell given twice, or one dataset's cells run with
different settings; every cell records its run settings). On smartwatch every run uses learning
rate 0.01 and clipping bound 0.1 (``DATASET_SETTINGS``): what ``tune-dp`` chose at ε = 8 on seed
0 for learning_quality's pretrained, top-only path, borrowed here for training from scratch at
every cap, because with the run defaults (0.003, 1.0) every policy stayed within a few points of
chance. Synthetic keeps the run defaults. ``--seeds``, ``--first-seed``, ``--datasets``,
``--policies``, ``--caps``, ``--clients``, ``--rounds`` and ``--local-epochs`` change the grid;
``--seed`` seeds only the bootstrap (each run's seed is its scenario seed); ``--quick`` runs a
tiny grid (CI).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from fedmosaic.privacy.attacks.run import attack_run
from fedmosaic.privacy.controller.policies import TRAINED_POLICIES
from fedmosaic.simulation.inprocess import run_in_process

POLICIES = ("none", "static", "linear", "exponential", "alpine", "bandit", "ddpg", "td3",
            "td3-discount-0", "td3-no-risk")
SIMPLE = ("none", "static", "linear", "exponential", "alpine", "bandit")
CAPS = (1.0, 3.0, 8.0)
# DP-SGD settings per dataset (module docstring: where smartwatch's come from)
DATASET_SETTINGS = {"smartwatch": {"learning-rate": 0.01, "max-grad-norm": 0.1}}
DOMINANCE_TARGET = 0.8


def policy_overrides(policy: str) -> dict[str, Any]:
    """``controller`` (and ``controller-policy`` for an ablation) of a benchmark policy."""
    if policy.startswith("td3-"):
        return {"controller": "td3", "controller-policy": str(TRAINED_POLICIES /
                                                              f"{policy}.zip")}
    return {"controller": policy}


def one_run(policy: str, dataset: str, seed: int, cap: float, base: dict[str, Any],
            runs_dir: Path) -> dict[str, Any]:
    """Run one (policy, dataset, seed, cap) cell and attack its final model."""
    rounds = int(base["num-server-rounds"])
    overrides = {**base, **DATASET_SETTINGS.get(dataset, {}), **policy_overrides(policy),
                 "dataset": dataset, "seed": seed,
                 "dp": True, "dp-epsilon-budget": cap, "out-dir": str(runs_dir),
                 "run-name": f"{dataset}-{policy}-seed{seed}-eps{cap:g}"}
    if seed % 2:  # a risk shift: attackers appear mid-run
        overrides.update({"attack": "burst", "malicious-fraction": 0.2,
                          "attack-start-round": rounds // 2 + 1})
    started = time.perf_counter()
    config = run_in_process(overrides)
    wall = time.perf_counter() - started
    summary = json.loads((config.run_dir() / "summary.json").read_text())
    attacks = attack_run(config.run_dir())
    reid = attacks["reidentification_from_embeddings"]
    spent = [d["epsilon_spent"] for d in summary["privacy"]["devices"].values()]
    controller = summary.get("controller") or {}
    return {"policy": policy, "dataset": dataset, "seed": seed, "cap": cap,
            "risk_shift": bool(seed % 2), "accuracy": summary["final_accuracy"],
            "reidentification": reid["accuracy"], "reidentification_chance": reid["chance"],
            "membership_tpr_at_01pct_fpr":
                attacks["membership_loss_threshold"]["tpr_at_01pct_fpr"],
            "epsilon_spent_max": max(spent, default=0.0),
            "epsilon_spent_mean": float(np.mean(spent)) if spent else 0.0,
            "over_cap": sum(len(d["over_cap"]) for d in summary["privacy"]["devices"].values()),
            "controller_seconds_per_round": controller.get("seconds_per_round", 0.0),
            "round_seconds": wall / max(1, summary["rounds"]),
            "audit_entries": controller.get("audit_entries", 0),
            "settings": {"num-clients": config.num_clients,
                         "num-server-rounds": config.num_server_rounds,
                         "local-epochs": config.local_epochs,
                         "learning-rate": config.learning_rate,
                         "max-grad-norm": config.max_grad_norm,
                         "samples-per-client": config.samples_per_client}}


def score(cell: dict[str, Any]) -> float:
    """Utility minus leakage above chance: ``accuracy − (re-identification − chance)``."""
    return cell["accuracy"] - (cell["reidentification"] - cell["reidentification_chance"])


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` at least as accurate and as private as ``b``, and strictly better in one."""
    better_or_equal = (a["accuracy"] >= b["accuracy"]
                       and a["reidentification"] <= b["reidentification"])
    strictly = a["accuracy"] > b["accuracy"] or a["reidentification"] < b["reidentification"]
    return better_or_equal and strictly


def dominance_shares(cells: list[dict[str, Any]], policy: str) -> tuple[float | None, ...]:
    """Share of scenarios where ``policy`` dominates static at every cap / at its own cap."""
    index = {(c["policy"], c["dataset"], c["seed"], c["cap"]): c for c in cells}
    every, same = [], []
    for (name, dataset, seed, cap), cell in index.items():
        if name != policy:
            continue
        statics = [index.get(("static", dataset, seed, c)) for c in CAPS]
        statics = [s for s in statics if s is not None]
        if statics:
            every.append(all(dominates(cell, s) for s in statics))
        own = index.get(("static", dataset, seed, cap))
        if own is not None:
            same.append(dominates(cell, own))
    return (float(np.mean(every)) if every else None, float(np.mean(same)) if same else None)


def iqm_difference(cells: list[dict[str, Any]], policy: str, baseline: str,
                   seed: int) -> dict[str, float] | None:
    """IQM (rliable) of paired score differences ``policy − baseline``, 95 % bootstrap CI.

    Each (dataset, seed, cap) cell is one pair; the three caps of a scenario share its data
    and attackers, so the interval, which treats them as independent, is optimistic.

    The interval is SciPy's bootstrap (BCa, 2,000 resamples) of the IQM; rliable's own
    bootstrap goes through ``arch``, which does not import under pandas 3.
    """
    from scipy.stats import bootstrap

    index = {(c["policy"], c["dataset"], c["seed"], c["cap"]): score(c) for c in cells}
    pairs = np.asarray([index[(policy, *key[1:])] - value for key, value in index.items()
                        if key[0] == baseline and (policy, *key[1:]) in index], dtype=float)
    if len(pairs) < 2:
        return None
    if np.ptp(pairs) == 0:  # no spread: the interval is the point
        return {"iqm": float(pairs[0]), "ci_low": float(pairs[0]),
                "ci_high": float(pairs[0]), "scenarios": len(pairs)}
    interval = bootstrap((pairs,), _iqm, n_resamples=2000, confidence_level=0.95,
                         random_state=np.random.default_rng(seed)).confidence_interval
    return {"iqm": float(_iqm(pairs)), "ci_low": float(interval.low),
            "ci_high": float(interval.high), "scenarios": len(pairs)}


def hypervolume(cells: list[dict[str, Any]], policy: str) -> float | None:
    """Hypervolume of the policy's per-cap mean (accuracy, re-identification) points."""
    from pymoo.indicators.hv import HV

    points = []
    for cap in CAPS:
        chosen = [c for c in cells if c["policy"] == policy and c["cap"] == cap]
        if chosen:
            points.append([-np.mean([c["accuracy"] for c in chosen]),
                           np.mean([c["reidentification"] for c in chosen])])
    if not points:
        return None
    return float(HV(ref_point=np.array([0.0, 1.0]))(np.asarray(points)))


def summarize(cells: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The figures (module docstring)."""
    policies = sorted({c["policy"] for c in cells})
    iqm = {p: float(_iqm([score(c) for c in cells if c["policy"] == p])) for p in policies}
    simple = [p for p in SIMPLE if p in iqm]
    best_simple = max(simple, key=iqm.__getitem__) if simple else None
    every, same = dominance_shares(cells, "td3")
    figures: dict[str, Any] = {
        "td3_dominates_static_share": every,
        "td3_dominates_static_share_target": DOMINANCE_TARGET,
        "td3_dominates_static_share_met": every is not None and every >= DOMINANCE_TARGET,
        "td3_dominates_static_same_cap_share": same,
        "td3_vs_best_baseline": (iqm_difference(cells, "td3", best_simple, seed)
                                 if best_simple and "td3" in iqm else None),
        "best_simple_policy": best_simple,
        "best_policy": max(iqm, key=iqm.__getitem__) if iqm else None,
        "score_iqm": iqm,
    }
    for policy in policies:
        own = [c for c in cells if c["policy"] == policy]
        name = policy.replace("-", "_")
        figures[f"hypervolume_{name}"] = hypervolume(cells, policy)
        figures[f"accuracy_{name}"] = float(np.mean([c["accuracy"] for c in own]))
        figures[f"reidentification_{name}"] = float(np.mean(
            [c["reidentification"] for c in own]))
        figures[f"membership_tpr_at_01pct_fpr_{name}"] = float(np.mean(
            [c["membership_tpr_at_01pct_fpr"] for c in own]))
        figures[f"controller_overhead_{name}"] = float(np.mean(
            [c["controller_seconds_per_round"] / c["round_seconds"] for c in own]))
        figures[f"epsilon_spent_share_{name}"] = float(np.mean(
            [c["epsilon_spent_max"] / c["cap"] for c in own]))
    figures["ablation_discount_0_vs_td3"] = _difference(iqm, "td3-discount-0", "td3")
    figures["ablation_no_risk_vs_td3"] = _difference(iqm, "td3-no-risk", "td3")
    figures["over_cap_rounds"] = int(sum(c["over_cap"] for c in cells))
    figures["epsilon_spent_max_over_cap"] = float(max(
        (c["epsilon_spent_max"] / c["cap"] for c in cells), default=0.0))
    return figures


def _iqm(values: Any, axis: int = -1) -> Any:
    """rliable's interquartile mean (along ``axis`` for SciPy's vectorised bootstrap)."""
    from rliable import metrics

    return np.apply_along_axis(lambda row: metrics.aggregate_iqm(row.reshape(-1, 1)), axis,
                               np.asarray(values, dtype=float))


def _difference(iqm: dict[str, float], a: str, b: str) -> float | None:
    return iqm[a] - iqm[b] if a in iqm and b in iqm else None


def merged_cells(paths: list[Path]) -> list[dict[str, Any]]:
    """The cells of earlier results (or their ``.cells.json``), checked to belong together.

    Raises:
        ValueError: If a (policy, dataset, seed, cap) cell comes twice (e.g. a result and
            its own ``.cells.json``), or one dataset's cells ran with different settings.
    """
    cells, seen, settings = [], {}, {}
    for path in paths:
        for cell in json.loads(Path(path).read_text())["cells"]:
            key = (cell["policy"], cell["dataset"], cell["seed"], cell["cap"])
            if key in seen:
                raise ValueError(f"cell {key} is in both {seen[key]} and {path}: merge each "
                                 f"shard once (its result or its .cells.json, not both)")
            seen[key] = path
            if "settings" in cell:
                first = settings.setdefault(cell["dataset"], (cell["settings"], path))
                if first[0] != cell["settings"]:
                    raise ValueError(f"{cell['dataset']} cells ran with {first[0]} in "
                                     f"{first[1]} but with {cell['settings']} in {path}")
            cells.append(cell)
    return cells


def figures_with_breakdowns(cells: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """:func:`summarize` over every cell, per dataset, and with and without attackers."""
    figures = summarize(cells, seed)
    figures["by_dataset"] = {d: summarize([c for c in cells if c["dataset"] == d], seed)
                             for d in sorted({c["dataset"] for c in cells})}
    figures["by_risk_shift"] = {
        name: summarize([c for c in cells if c["risk_shift"] == shift], seed)
        for name, shift in (("attackers", True), ("no_attackers", False))
        if any(c["risk_shift"] == shift for c in cells)}
    return figures


def run_grid(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the grid the arguments select; its cells and its configuration."""
    seeds = range(args.first_seed, args.first_seed + (args.seeds or (1 if args.quick else 10)))
    datasets = (args.datasets or ("smartwatch" if args.quick else
                                  "smartwatch,synthetic")).split(",")
    policies = (args.policies or ("static,bandit,td3" if args.quick else
                                  ",".join(POLICIES))).split(",")
    caps = tuple(float(c) for c in (args.caps or ("3" if args.quick else "1,3,8")).split(","))
    base = {"local-epochs": args.local_epochs or 1,
            "num-clients": args.clients or (3 if args.quick else 4),
            "num-server-rounds": args.rounds or (2 if args.quick else 5),
            "fraction-evaluate": 0.0, "samples-per-client": 200}
    runs_dir = common.run_folder("controller", args.runs_dir)
    partial = args.out.with_suffix(".cells.json")  # every finished run, for --merge
    cells: list[dict[str, Any]] = []
    for dataset in datasets:
        for seed in seeds:
            for cap in caps:
                for policy in policies:
                    cells.append(one_run(policy, dataset, seed, cap, base, runs_dir))
                    cell = cells[-1]
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_text(json.dumps({"cells": cells}) + "\n")
                    print(f"{dataset} seed {seed} ε={cap:g} {policy}: accuracy "
                          f"{cell['accuracy']:.3f}, re-identification "
                          f"{cell['reidentification']:.3f}, ε spent max "
                          f"{cell['epsilon_spent_max']:.3f}", flush=True)
    return cells, {"seeds": list(seeds), "datasets": datasets, "policies": policies,
                   "caps": caps, "dataset_settings": DATASET_SETTINGS, **base}


def main() -> None:
    """Run the grid, attack every run, write the figures (module docstring)."""
    parser = common.make_parser("controller", __doc__, seed_help="seed of the bootstrap "
                                "interval (each run's seed is its scenario seed)",
                                local_epochs_help="local epochs per round (default: 1)")
    parser.add_argument("--seeds", type=int, default=None, help="scenario seeds (full: 10)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first scenario seed: the run covers --first-seed to "
                             "--first-seed + --seeds - 1 (a shard of the seeds)")
    parser.add_argument("--datasets", default=None, help="comma-separated (full: both)")
    parser.add_argument("--policies", default=None, help="comma-separated (full: all)")
    parser.add_argument("--caps", default=None, help="comma-separated ε caps (full: 1,3,8)")
    parser.add_argument("--clients", type=int, default=None, help="devices per run")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="summarize the cells of earlier results or of their "
                             "`.cells.json` (shards run in parallel; each shard once) "
                             "instead of running")
    args = parser.parse_args()
    if args.merge:
        cells = merged_cells(args.merge)
        config: dict[str, Any] = {
            "merged": [str(path) for path in args.merge],
            "seeds": sorted({c["seed"] for c in cells}),
            "datasets": sorted({c["dataset"] for c in cells}),
            "policies": sorted({c["policy"] for c in cells}),
            "caps": sorted({c["cap"] for c in cells}),
            "settings": {c["dataset"]: c["settings"] for c in cells if "settings" in c}}
    else:
        cells, config = run_grid(args)
    figures = figures_with_breakdowns(cells, args.seed or 0)
    common.print_table("controller", [(k, v) for k, v in figures.items()
                                      if not isinstance(v, dict)])
    common.write_result(args.out, "controller", args.quick, figures,
                        baseline={"static": "equal spend per round at the same cap",
                                  "best_simple_policy": figures["best_simple_policy"]},
                        config=config, cells=cells)


if __name__ == "__main__":
    main()
