"""Shared helpers of the benchmark scripts: arguments, statistics, tables and JSON results.

Every benchmark runs as ``python benchmarks/NAME.py [--quick] [--out FILE]`` from the repo
root (the script's folder is then first on ``sys.path``, so ``import common`` finds this
module) and writes ``{"benchmark", "timestamp", "quick", "figures", "baseline", "config",
"versions", ...}`` to ``--out`` (default ``benchmarks/results/NAME.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fedmosaic.config import RunConfig
from fedmosaic.data.modality import MultimodalArrays
from fedmosaic.models.training import evaluate, make_loader, train
from fedmosaic.task import build_model, cached_dataset, loss_weights

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
CENTRALIZED_THREADS = 1
"""Torch threads of a centralized baseline, like each simulated client's one CPU."""


def make_parser(name: str, doc: str | None, *,
                seed_help: str = "seed of all runs (default: pyproject's seed)",
                local_epochs_help: str = "local epochs per round (default: pyproject's "
                                         "local-epochs)") -> argparse.ArgumentParser:
    """A parser with the options every benchmark has.

    ``--quick``, ``--out``, and the run options ``--local-epochs``, ``--seed`` and
    ``--runs-dir`` (see :func:`run_overrides` and :func:`run_folder`).

    Args:
        name: The benchmark's name (its file name without ``.py``); the default output is
            ``benchmarks/results/<name>.json``.
        doc: The script's module docstring, shown by ``--help``.
        seed_help: ``--seed``'s help, for a benchmark that uses it otherwise.
        local_epochs_help: ``--local-epochs``'s help, for a benchmark with its own default.

    """
    parser = argparse.ArgumentParser(
        prog=f"benchmarks/{name}.py", description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="small settings that finish in a few minutes (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help="where to write the JSON result (default: %(default)s)")
    parser.add_argument("--local-epochs", type=int, default=None, help=local_epochs_help)
    parser.add_argument("--seed", type=int, default=None, help=seed_help)
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="where the run folders go (default: a new folder under "
                             "benchmarks/results/runs/)")
    return parser


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config overrides every benchmark takes from its arguments."""
    overrides: dict[str, Any] = {}
    if args.local_epochs is not None:
        overrides["local-epochs"] = args.local_epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    return overrides


def run_folder(name: str, runs_dir: Path | None) -> Path:
    """Folder for a benchmark's run folders: ``runs_dir`` or a fresh timestamped one."""
    if runs_dir is not None:
        return Path(runs_dir).expanduser().resolve()
    return RESULTS_DIR / "runs" / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def median(values: Sequence[float]) -> float | None:
    """The median of ``values``; ``None`` for no values."""
    return float(statistics.median(values)) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` if either is missing or the divisor is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    found = {"python": platform.python_version()}
    for package in ("torch", "flwr", "fedmosaic", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_result(
    path: Path,
    name: str,
    quick: bool,
    figures: dict[str, Any],
    baseline: dict[str, Any],
    config: dict[str, Any],
    **extra: Any,
) -> Path:
    """Write a benchmark's JSON result with versions and a UTC timestamp; return the path."""
    result = {
        "benchmark": name,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "figures": figures,
        "baseline": baseline,
        "config": config,
        "versions": versions(),
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """Print ``(label, value)`` rows as a two-column table; floats get 4 decimals."""
    width = max((len(label) for label, _ in rows), default=0)
    print(title)
    print("-" * max(len(title), width + 12))
    for label, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{label:<{width}}  {shown}")


def centralized(config: RunConfig) -> dict[str, Any]:
    """Train the run's model on the pooled partitions; evaluate on the central test set.

    Torch gets one thread, like each ClientApp actor of the simulations (one CPU each).
    """
    torch.set_num_threads(CENTRALIZED_THREADS)
    started = time.perf_counter()
    dataset = cached_dataset(config)
    pooled = MultimodalArrays.concatenate(
        [dataset.partition(p)[0] for p in range(config.num_clients)]
    )
    model = build_model(config, dataset)
    loader = make_loader(pooled, dataset.specs, config.batch_size, shuffle=True,
                         seed=config.seed)
    epochs = config.num_server_rounds * config.local_epochs
    trained = train(model, loader, dataset.specs, epochs=epochs,
                    learning_rate=config.learning_rate, weights=loss_weights(config))
    test_loader = make_loader(dataset.central_test(), dataset.specs, 256, shuffle=False, seed=0)
    with torch.no_grad():
        result = evaluate(model, test_loader, dataset.specs)
    return {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "epochs": epochs,
        "train_examples": len(pooled),
        "test_examples": result.num_examples,
        "final_train_loss": trained.loss,
        "wall_seconds": time.perf_counter() - started,
    }
