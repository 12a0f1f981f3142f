"""Synchronous FedAvg against asynchronous FedBuff under stragglers, on a simulated clock.

Claim:
    With slow and uneven devices, ``mode = async`` (FedBuff: ``concurrency`` devices training,
    an aggregation every ``buffer-size`` replies, stale replies scaled by 1/sqrt(1 + s))
    reaches 90 % of synchronous FedAvg's final accuracy at least 2x sooner, and after the same
    time its accuracy is at most 1 point below synchronous FedAvg's.

Method:
    In-process runs (``fedmosaic.simulation.inprocess``; the same server chain and device
    rounds as ``fedmosaic run``) on smartwatch (10 devices) and synthetic (20 devices), seeds
    0-2, under two latency models (``server/latency.py``; a device round takes 1 s x
    LogNormal(0, σ²), x 5 for a straggler):

    * ``stragglers``: 20 % of devices 5x slower, σ = 0.25;
    * ``heavy-tail``: no stragglers, σ = 1.0 (log-normal; a few rounds take 10x the median).

    Sync: every device trains each round, ``--rounds`` rounds; a round lasts as long as its
    slowest device. Async: concurrency = every device, buffer-size = half of them,
    max-staleness 10, run for as many aggregations as its replies need to cover sync's
    simulated time (estimated from the latency model's mean, plus 50 %). Time is the
    simulated clock (``simulated_seconds``), the same in every run of a config on any
    machine; compute time is not part of it. Per cell (dataset, latency, seed):

    * target = 0.9 x sync's final accuracy; time to target = the simulated time of the first
      round (sync) or aggregation (async) whose central accuracy reaches it;
    * ``speedup`` = sync's time to target / async's;
    * ``delta_points`` = 100 x (async's accuracy at sync's end time - sync's final accuracy).

Figures and targets:
    ``async_time_to_target_speedup`` (geometric mean over cells) >= 2 and
    ``async_final_accuracy_delta_points`` (mean over cells) >= -1; the worst cell of each
    beside them (``*_worst``), and every cell in ``cells``. ``--quick``: synthetic only, one
    seed, stragglers only, 3 rounds (CI; indicative only). Runs in parallel processes
    (``--workers``, one torch thread each). It measures and reports; it asserts nothing.

Run: ``python benchmarks/async_rounds.py [--quick] [--rounds R] [--workers W] [--out FILE]``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from typing import Any

import common
import numpy as np
import torch

from fedmosaic.config import RunConfig
from fedmosaic.server.latency import LatencyModel
from fedmosaic.simulation.inprocess import run_in_process

NAME = "async_rounds"
LATENCIES: dict[str, dict[str, float]] = {
    "stragglers": {"straggler-fraction": 0.2, "straggler-slowdown": 5.0, "latency-sigma": 0.25},
    "heavy-tail": {"straggler-fraction": 0.0, "latency-sigma": 1.0},
}
DATASETS: dict[str, dict[str, Any]] = {
    "smartwatch": {"dataset": "smartwatch", "num-clients": 10},
    "synthetic": {"dataset": "synthetic", "num-clients": 20, "samples-per-client": 100},
}
TARGET_SHARE = 0.9
TARGETS = {"async_time_to_target_speedup": 2.0, "async_final_accuracy_delta_points": -1.0}


def history(config: RunConfig) -> list[dict[str, Any]]:
    """The run's rounds from its ``summary.json``."""
    return json.loads((config.run_dir() / "summary.json").read_text())["history"]


def time_to(rows: list[dict[str, Any]], accuracy: float) -> float | None:
    """Simulated time of the first row at or above ``accuracy`` (``None``: never)."""
    return next((r["simulated_seconds"] for r in rows if r["accuracy"] >= accuracy), None)


def accuracy_at(rows: list[dict[str, Any]], seconds: float) -> float | None:
    """Accuracy of the last row that ended by ``seconds`` (``None``: none did)."""
    done = [r for r in rows if r["simulated_seconds"] <= seconds + 1e-9]
    return done[-1]["accuracy"] if done else None


def async_versions(config: RunConfig, sync_seconds: float) -> int:
    """Aggregations whose replies cover ``sync_seconds`` of simulated time, plus 50 %."""
    model = LatencyModel(config, list(range(1, config.num_clients + 1)))
    mean = np.mean([model.seconds(node, draw) for node in range(1, config.num_clients + 1)
                    for draw in range(50)])
    replies = config.async_concurrency * sync_seconds / mean
    return max(2, math.ceil(1.5 * replies / config.async_buffer))


def run_cell(cell: dict[str, Any], rounds: int, local_epochs: int, runs_dir: str) -> dict[str, Any]:
    """Sync then async for one (dataset, latency, seed); their curves and the cell's figures."""
    torch.set_num_threads(1)
    base = {**DATASETS[cell["dataset"]], **LATENCIES[cell["latency"]], "seed": cell["seed"],
            "local-epochs": local_epochs, "fraction-train": 1.0, "fraction-evaluate": 0.0,
            "out-dir": runs_dir}
    label = f"{cell['dataset']}-{cell['latency']}-{cell['seed']}"
    sync = history(run_in_process({**base, "num-server-rounds": rounds,
                                   "run-name": f"sync-{label}"}))
    sync_seconds, sync_final = sync[-1]["simulated_seconds"], sync[-1]["accuracy"]
    config = RunConfig.from_mapping({**base, "mode": "async", "max-staleness": 10})
    versions = async_versions(config, sync_seconds)
    asynchronous = history(run_in_process({**config.to_mapping(), "num-server-rounds": versions,
                                           "run-name": f"async-{label}"}))
    target = TARGET_SHARE * sync_final
    sync_time, async_time = time_to(sync, target), time_to(asynchronous, target)
    at_sync_end = accuracy_at(asynchronous, sync_seconds)
    return {
        **cell, "sync_final_accuracy": sync_final, "sync_seconds": sync_seconds,
        "target_accuracy": target, "sync_time_to_target": sync_time,
        "async_time_to_target": async_time, "async_versions": versions,
        "async_accuracy_at_sync_end": at_sync_end,
        "speedup": common.ratio(sync_time, async_time),
        "delta_points": (100 * (at_sync_end - sync_final) if at_sync_end is not None
                         else None),
        "sync_curve": [(r["simulated_seconds"], r["accuracy"]) for r in sync],
        "async_curve": [(r["simulated_seconds"], r["accuracy"]) for r in asynchronous],
    }


def figures_of(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline figures (module docstring), the worst cells, and each target beside them."""
    speedups = [c["speedup"] for c in cells if c["speedup"] is not None]
    deltas = [c["delta_points"] for c in cells if c["delta_points"] is not None]
    figures: dict[str, Any] = {
        "async_time_to_target_speedup": (float(np.exp(np.mean(np.log(speedups))))
                                         if speedups else None),
        "async_time_to_target_speedup_worst": min(speedups, default=None),
        "async_final_accuracy_delta_points": float(np.mean(deltas)) if deltas else None,
        "async_final_accuracy_delta_points_worst": min(deltas, default=None),
        "cells_without_speedup": len(cells) - len(speedups),
    }
    for name, target in TARGETS.items():
        figures[f"{name}_target"] = target
        figures[f"{name}_target_met"] = figures[name] is not None and figures[name] >= target
    return figures


def main() -> None:
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--rounds", type=int, default=None, help="sync rounds (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="cells run in parallel")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    local_epochs = args.local_epochs or 1
    seeds = (args.seed,) if args.seed is not None else (0,) if args.quick else (0, 1, 2)
    datasets = ("synthetic",) if args.quick else tuple(DATASETS)
    latencies = ("stragglers",) if args.quick else tuple(LATENCIES)
    cells = [{"dataset": d, "latency": lat, "seed": s}
             for d in datasets for lat in latencies for s in seeds]
    runs_dir = common.run_folder(NAME, args.runs_dir)
    print(f"{NAME}: {len(cells)} cells on {args.workers} workers; runs in {runs_dir}",
          flush=True)
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, maxtasksperchild=1) as pool:
        results = pool.starmap(run_cell, [(c, rounds, local_epochs, str(runs_dir))
                                          for c in cells])
    figures = figures_of(results)
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"what": "synchronous FedAvg, every device each round, same latency model",
                  "sync_final_accuracy": {f"{c['dataset']}-{c['latency']}-{c['seed']}":
                                          c["sync_final_accuracy"] for c in results}},
        config={"rounds": rounds, "local_epochs": local_epochs, "seeds": list(seeds),
                "latencies": {k: LATENCIES[k] for k in latencies},
                "datasets": {k: DATASETS[k] for k in datasets}, "target_share": TARGET_SHARE,
                "clock": "simulated (server/latency.py)"},
        cells=results)
    common.print_table(f"{NAME} ({len(cells)} cells)", [
        *((f"{c['dataset']}/{c['latency']}/{c['seed']} speedup, Δ points",
           (c["speedup"], c["delta_points"])) for c in results), *figures.items()])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
