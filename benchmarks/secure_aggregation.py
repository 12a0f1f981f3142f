"""What secure aggregation costs: bytes and seconds per round, SecAgg+ against plain aggregation.

Claim:
    SecAgg+ (``secure-aggregation=true``: key advertisement, encrypted share exchange, masked
    32-bit codes, unmasking) costs at most 2x the bytes of plain aggregation per round
    (Bonawitz et al. 2017 measured 1.73x at 2^10 users) and at most 1.5x its round time at 10
    devices, flat and through an edge tier.

Method:
    Every run is fedmosaic's real ServerApp and ClientApp in this process
    (``fedmosaic.simulation.inprocess.run_in_process``: every message round-trips through
    Flower's serialization; no Ray), federated evaluation off, one seed, all devices sampled
    each round. Cells: 10 devices (smartwatch, one subject each) and 50 devices (synthetic),
    each flat and with edges (2 and 5 edges). In each cell the plain and the secure run
    alternate, same data, model, seed and rounds. Bytes per round are the round's serialized
    messages both ways (``bytes_up + bytes_down`` of the history: training messages and,
    with SecAgg+, the protocol's own three exchanges, also under ``secure_aggregation``);
    with edges also each hop (``bytes_device_to_edge``, ``bytes_edge_to_cloud``). Seconds
    per round are the wall time of a round (``seconds``: sampling, the protocol, every
    device's training, aggregation, central evaluation), the median over the run's rounds.

Baseline:
    The same cell with ``secure-aggregation=false``, in the same run.

Figures:
    ``bytes_ratio`` = the largest, over the cells, of secure bytes per round / plain bytes per
    round (target <= 2); ``round_time_ratio_10_devices`` = the larger of the two 10-device
    cells' secure median round time / plain (target <= 1.5); ``round_time_ratio_50_devices``
    the same at 50 devices (no target); ``accuracy_delta_points`` = the largest plain final
    accuracy − secure final accuracy, in points, over the cells (informative: the codes'
    rounding and weights). Each cell is under ``cells``. ``--quick`` runs the two 10-device
    cells for one round: it checks that everything runs; its figures are not meaningful.

Run: ``python benchmarks/secure_aggregation.py [--quick] [--rounds R] [--out FILE]``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common import make_parser, print_table, ratio, run_folder, run_overrides, write_result

from fedmosaic.simulation.inprocess import run_in_process

NAME = "secure_aggregation"
CELLS = (("smartwatch", 10, 0), ("smartwatch", 10, 2), ("synthetic", 50, 0), ("synthetic", 50, 5))
"""(dataset, devices, edges) of each cell."""
TARGETS = {"bytes_ratio": 2.0, "round_time_ratio_10_devices": 1.5}


def per_round(history: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median bytes (both ways, and each hop) and seconds per round of a run's history."""
    def med(key: str) -> float | None:
        values = [row[key] for row in history if row.get(key) is not None]
        return float(statistics.median(values)) if values else None
    return {"bytes": float(statistics.median(r["bytes_up"] + r["bytes_down"] for r in history)),
            "bytes_device_to_edge": med("bytes_device_to_edge"),
            "bytes_edge_to_cloud": med("bytes_edge_to_cloud"),
            "seconds": med("seconds"),
            "final_accuracy": history[-1]["accuracy"]}


def run_cell(dataset: str, devices: int, edges: int, rounds: int, folder: Path,
             overrides: dict[str, Any]) -> dict[str, Any]:
    """The plain and the secure run of one cell, and their ratios."""
    cell: dict[str, Any] = {"dataset": dataset, "devices": devices, "edges": edges}
    for secure in (False, True):
        name = f"{dataset}-{devices}d-{edges}e-{'secure' if secure else 'plain'}"
        config = run_in_process({"dataset": dataset, "num-clients": devices, "num-edges": edges,
                                 "num-server-rounds": rounds, "fraction-evaluate": 0.0,
                                 "secure-aggregation": secure, "out-dir": str(folder),
                                 "run-name": name, **overrides})
        history = [json.loads(line) for line in
                   (config.run_dir() / "history.jsonl").read_text().splitlines()]
        cell["secure" if secure else "plain"] = per_round(history)
        if secure:
            cell["protocol"] = [row["secure_aggregation"] for row in history]
    plain, secure = cell["plain"], cell["secure"]
    cell["bytes_ratio"] = ratio(secure["bytes"], plain["bytes"])
    cell["round_time_ratio"] = ratio(secure["seconds"], plain["seconds"])
    cell["accuracy_delta_points"] = 100 * (plain["final_accuracy"] - secure["final_accuracy"])
    return cell


def figures_of(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures and each one's target (module docstring)."""
    def worst(key: str, devices: int | None = None) -> float | None:
        values = [c[key] for c in cells if c[key] is not None
                  and (devices is None or c["devices"] == devices)]
        return max(values) if values else None
    figures: dict[str, Any] = {
        "bytes_ratio": worst("bytes_ratio"),
        "round_time_ratio_10_devices": worst("round_time_ratio", 10),
        "round_time_ratio_50_devices": worst("round_time_ratio", 50),
        "accuracy_delta_points": worst("accuracy_delta_points"),
    }
    for key, target in TARGETS.items():
        figures[f"{key}_target"] = target
        figures[f"{key}_target_met"] = (figures[key] is not None and figures[key] <= target)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(NAME, __doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    cells_run = CELLS[:2] if args.quick else CELLS
    folder = run_folder(NAME, args.runs_dir)
    cells = [run_cell(dataset, devices, edges, rounds, folder, run_overrides(args))
             for dataset, devices, edges in cells_run]
    figures = figures_of(cells)
    print_table("secure aggregation against plain aggregation", [
        *((f"{c['devices']} devices, {c['edges']} edges: bytes ratio", c["bytes_ratio"])
          for c in cells),
        *((f"{c['devices']} devices, {c['edges']} edges: round-time ratio",
           c["round_time_ratio"]) for c in cells),
        *sorted(figures.items())])
    path = write_result(args.out, NAME, args.quick, figures,
                        {"mode": "secure-aggregation=false, same cell, same run"},
                        {"rounds": rounds, "cells": [list(c) for c in cells_run]},
                        cells=cells)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
