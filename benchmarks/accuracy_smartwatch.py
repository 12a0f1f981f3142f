"""Accuracy of federated training on the smartwatch subjects versus centralized training.

Claim:
    Federated FedAvg and FedProx over the 10 smartwatch subjects (one client per subject,
    non-IID by construction) reach the accuracy of centralized training of the same model on
    the pooled data, within a few points.

Method:
    fedmosaic's app runs as a Ray simulation (``fedmosaic.launch.runs.run_simulation``)
    twice, with ``strategy=fedavg`` and with ``strategy=fedprox`` (``proximal-mu`` from
    ``--proximal-mu``), for R rounds of E = ``local-epochs`` epochs; its final central
    accuracy (all subjects' held-out windows, ``dataset.central_test()``) is the federated
    figure. Every other setting is the app's default from ``pyproject.toml``, with one seed
    for all runs.

Baseline:
    Centralized training in this process: the same model (``fedmosaic.task.build_model``, same
    RunConfig and seed), the same loop and loss (``fedmosaic.models.training.train`` with
    ``fedmosaic.task.loss_weights``), batch size and learning rate, on the training windows of
    all 10 partitions pooled (``MultimodalArrays.concatenate``), for R x E epochs in one
    ``train`` call (one torch thread, like each simulated client), evaluated on the same
    central test set.

Target:
    ``fedavg_gap_points`` and ``fedprox_gap_points`` (centralized minus federated accuracy,
    in percentage points) at most ``target_gap_points`` = 3 in full mode (R and E the app's
    defaults ``num-server-rounds`` and ``local-epochs`` from ``pyproject.toml``). Quick mode
    (R = 2) only checks that everything runs; its gaps are not meaningful. The script
    measures and reports; it asserts nothing.

Run: ``python benchmarks/accuracy_smartwatch.py [--quick] [--rounds R] [--local-epochs E]
[--proximal-mu MU] [--seed S] [--out FILE]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import common

from fedmosaic.config import RunConfig
from fedmosaic.launch.runs import run_simulation

NAME = "accuracy_smartwatch"
TARGET_GAP_POINTS = 3.0
QUICK_ROUNDS = 2


def federated(overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run fedmosaic's simulation with ``overrides``; its final accuracy and history."""
    started = time.perf_counter()
    summary = run_simulation(overrides, out=run_dir, show_progress=False)
    return {
        "accuracy": summary["final_accuracy"],
        "loss": summary["final_loss"],
        "rounds": summary["rounds"],
        "accuracy_per_round": [row["accuracy"] for row in summary["history"]],
        "run_dir": str(run_dir),
        "wall_seconds": time.perf_counter() - started,
        "run_wall_seconds": summary["wall_seconds"],
    }


def gap_points(central: float, federated_accuracy: float) -> float:
    """Centralized minus federated accuracy, in percentage points."""
    return 100.0 * (central - federated_accuracy)


def main() -> None:
    """Parse arguments, run the baseline and both strategies, write and print the figures."""
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--rounds", type=int, default=None,
                        help="server rounds (default: pyproject's num-server-rounds; "
                             f"{QUICK_ROUNDS} with --quick)")
    parser.add_argument("--proximal-mu", type=float, default=0.01,
                        help="FedProx's mu (default: %(default)s)")
    args = parser.parse_args()

    base: dict[str, Any] = common.run_overrides(args)
    if args.rounds is not None or args.quick:
        base["num-server-rounds"] = args.rounds or QUICK_ROUNDS
    config = RunConfig.from_mapping(base)
    runs_dir = common.run_folder(NAME, args.runs_dir)
    print(f"{NAME}: {config.num_server_rounds} rounds x {config.local_epochs} local epoch(s), "
          f"seed {config.seed}; run folders in {runs_dir}", flush=True)

    print("centralized training ...", flush=True)
    central = common.centralized(config)
    runs: dict[str, dict[str, Any]] = {}
    for strategy, extra in (("fedavg", {}), ("fedprox", {"proximal-mu": args.proximal_mu})):
        print(f"federated {strategy} ...", flush=True)
        overrides = {**config.to_mapping(), "strategy": strategy, **extra}
        overrides.pop("run-name")
        overrides.pop("out-dir")
        runs[strategy] = federated(overrides, runs_dir / strategy)

    figures = {
        "centralized_accuracy": central["accuracy"],
        "fedavg_accuracy": runs["fedavg"]["accuracy"],
        "fedprox_accuracy": runs["fedprox"]["accuracy"],
        "fedavg_gap_points": gap_points(central["accuracy"], runs["fedavg"]["accuracy"]),
        "fedprox_gap_points": gap_points(central["accuracy"], runs["fedprox"]["accuracy"]),
        "target_gap_points": TARGET_GAP_POINTS,
        "centralized_wall_seconds": central["wall_seconds"],
        "fedavg_wall_seconds": runs["fedavg"]["wall_seconds"],
        "fedprox_wall_seconds": runs["fedprox"]["wall_seconds"],
    }
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"what": "centralized training of the same model on the pooled training "
                          "windows of all partitions, same epochs, same central test set",
                  **central},
        config={"rounds": config.num_server_rounds, "local_epochs": config.local_epochs,
                "epochs_centralized": central["epochs"], "proximal_mu": args.proximal_mu,
                "seed": config.seed, "centralized_torch_threads": common.CENTRALIZED_THREADS,
                "run_config": config.to_mapping()},
        runs=runs,
    )
    common.print_table(f"{NAME} ({config.num_server_rounds} rounds)", [
        (name, value) for name, value in figures.items()
    ])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
