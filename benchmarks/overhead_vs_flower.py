"""Per-round time of fedmosaic's app versus a bare Flower quickstart app doing the same work.

Claim:
    fedmosaic's ServerApp and ClientApp (run-config validation, traffic metering, run folder
    with history, TensorBoard scalars, a checkpoint every round, the devices' missing-modality
    evaluation) add little to a round
    over plain Flower: at most 15 % more wall-clock time per round.

Method:
    Both apps run on the same Ray simulation runtime (``fedmosaic.simulation.engine``: one
    CPU per ClientApp actor, 10 SuperNodes, one partition per smartwatch subject), each in a
    child process started in a ``ProcessGroup`` so Ray goes away with it, ours via
    ``fedmosaic.launch.runs.run_simulation`` and the baseline via ``run_flower_app``.
    Both do the same work per round with the same settings (fedmosaic's defaults from its
    ``pyproject.toml``, or ``--local-epochs``): FedAvg with fraction-train 1.0 (10 clients,
    ``local-epochs`` epochs of ``fedmosaic.models.training.train`` on the same model and
    data), fraction-evaluate 0.5 (5 clients evaluate locally; ours also scores each device's
    model with each modality removed, part of what it adds) and a central evaluation on
    all subjects' held-out windows. Runs alternate ours, baseline, ours, baseline, ... for
    ``--repeats`` pairs of R rounds each.

    A round's time is the wall-clock interval between the central evaluations that end
    round r-1 and round r. Both apps append one JSON line per central evaluation (ours
    ``history.jsonl``, the baseline its ``rounds-file``); this script stamps each line
    when it appears (polling every 20 ms), the same way for both. Round 1 is left out: it
    includes starting the Ray actors and loading the data in each of them (about 4 s per
    process), which is start-up, not per-round cost. A run's per-round time is the median
    over rounds 2..R; a side's figure is the median over its repeats.

Baseline:
    ``benchmarks/flower_baseline/``: a Flower app written like Flower's quickstart-pytorch
    (Message API, ``@app.train``/``@app.evaluate``, ``FedAvg.start`` with an
    ``evaluate_fn``), bare (no metering, run folder, checkpoints or TensorBoard), using
    fedmosaic's model, smartwatch partitions and training loop, with the same sampling and
    minimum node counts as fedmosaic's strategy registry.

Target:
    ``round_time_ratio`` (median ours / median baseline) <= 1.15. Full mode: 3 repeats of
    5 rounds; ``--quick``: 1 repeat of 3 rounds (2 timed rounds; indicative only). The
    script measures and reports; it asserts nothing.

Run: ``python benchmarks/overhead_vs_flower.py [--quick] [--repeats N] [--rounds R]
[--local-epochs E] [--out FILE]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common
from flower_comparison import (
    BASELINE_APP_DIR,
    BASELINE_CLIENTAPP,
    BASELINE_SERVERAPP,
    POLL_SECONDS,
    baseline_run_config,
    run_baseline,
    run_ours,
)

from fedmosaic.config import ConfigValue, RunConfig

NAME = "overhead_vs_flower"
TARGET_RATIO = 1.15


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures from alternating ours/baseline runs."""
    ours = [r for r in runs if r["side"] == "ours"]
    base = [r for r in runs if r["side"] == "baseline"]
    ours_round = common.median([r["median_round_seconds"] for r in ours])
    base_round = common.median([r["median_round_seconds"] for r in base])
    return {
        "round_time_ratio": common.ratio(ours_round, base_round),
        "target_round_time_ratio": TARGET_RATIO,
        "ours_round_seconds": ours_round,
        "baseline_round_seconds": base_round,
        "round_time_ratio_per_repeat": [
            common.ratio(o["median_round_seconds"], b["median_round_seconds"])
            for o, b in zip(ours, base, strict=True)
        ],
        "ours_round_seconds_per_repeat": [r["median_round_seconds"] for r in ours],
        "baseline_round_seconds_per_repeat": [r["median_round_seconds"] for r in base],
        "ours_wall_seconds_per_repeat": [r["wall_seconds"] for r in ours],
        "baseline_wall_seconds_per_repeat": [r["wall_seconds"] for r in base],
        "wall_time_ratio": common.ratio(common.median([r["wall_seconds"] for r in ours]),
                                        common.median([r["wall_seconds"] for r in base])),
    }


def main() -> None:
    """Parse arguments, alternate the two apps, write and print the figures."""
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each app, alternated (default: 3; 1 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="server rounds per run, >= 2 (default: 5; 3 with --quick)")
    args = parser.parse_args()

    repeats = args.repeats or (1 if args.quick else 3)
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 2 or repeats < 1:
        parser.error(f"need --rounds >= 2 and --repeats >= 1, got {rounds} and {repeats}")
    overrides: dict[str, ConfigValue] = {"dataset": "smartwatch", "strategy": "fedavg",
                                         "num-server-rounds": rounds,
                                         **common.run_overrides(args)}
    config = RunConfig.from_mapping(overrides)
    runs_dir = common.run_folder(NAME, args.runs_dir)
    print(f"{NAME}: {repeats} repeat(s) x {rounds} rounds x {config.local_epochs} local "
          f"epoch(s) per app, alternated; run folders in {runs_dir}", flush=True)

    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for side, run in (("ours", run_ours), ("baseline", run_baseline)):
            print(f"repeat {repeat + 1}/{repeats}: {side} ...", flush=True)
            result = run(config, runs_dir / f"{side}-{repeat + 1}")
            print(f"  median round {result['median_round_seconds']:.3f} s, wall "
                  f"{result['wall_seconds']:.1f} s, accuracy {result['final_accuracy']:.4f}",
                  flush=True)
            runs.append(result)

    figures = summarize(runs)
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={
            "what": "bare Flower quickstart-style app (benchmarks/flower_baseline) with the "
                    "same model, data, training loop and sampling, same Ray runtime",
            "app_dir": str(BASELINE_APP_DIR),
            "serverapp": BASELINE_SERVERAPP,
            "clientapp": BASELINE_CLIENTAPP,
            "round_seconds": figures["baseline_round_seconds"],
        },
        config={"repeats": repeats, "rounds": rounds, "timed_rounds": f"2..{rounds}",
                "local_epochs": config.local_epochs,
                "order": "ours, baseline alternated", "poll_seconds": POLL_SECONDS,
                "run_config": config.to_mapping(),
                "baseline_run_config": baseline_run_config(config, Path("<run>/rounds.jsonl"))},
        runs=runs,
    )
    common.print_table(f"{NAME} ({repeats} x {rounds} rounds; rounds 2..{rounds} timed)", [
        ("ours round seconds (median)", figures["ours_round_seconds"]),
        ("baseline round seconds (median)", figures["baseline_round_seconds"]),
        ("round_time_ratio", figures["round_time_ratio"]),
        ("target_round_time_ratio", TARGET_RATIO),
        ("wall_time_ratio (incl. start-up)", figures["wall_time_ratio"]),
    ])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
