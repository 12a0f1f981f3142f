"""DP-SGD's local-training time against non-private training, per Opacus grad-sample mode.

One round of local training on client 0 of the smartwatch data (``local-epochs`` epochs,
batch size ``batch-size``) is timed for:

* ``plain``: :func:`fedmosaic.models.training.train` (Adam, no privacy) — the baseline;
* ``hooks`` and ``functorch``: :func:`fedmosaic.privacy.dp_sgd.train_private` in that Opacus
  ``grad_sample_mode`` (Poisson sampling, clipping, noise; σ calibrated for ε = 8, δ = 1e-5
  over the run's planned steps).

The modes are alternated within every repeat, each from freshly built weights; the figures
are the medians' ratios. ``fastest_mode`` is the mode the run config should name
(``grad-sample-mode``). Opacus's ``ew`` mode does not accept the model's dict input and ghost
clipping needs a loss Opacus can wrap, so neither is measured.

Figures: ``hooks_time_ratio``, ``functorch_time_ratio`` (DP / plain, lower is better),
``fastest_mode``, ``default_is_fastest``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import common
import torch

from fedmosaic.config import GRAD_SAMPLE_MODES, RunConfig
from fedmosaic.models.training import make_loader, train
from fedmosaic.privacy.accounting import calibrate_noise_multiplier, poisson_plan
from fedmosaic.privacy.dp_sgd import train_private
from fedmosaic.task import build_model, cached_dataset, loss_weights

NAME = "dp_speed"
MODES = ("plain", *GRAD_SAMPLE_MODES)
QUICK = {"repeats": 2, "local_epochs": 1}
FULL = {"repeats": 7}


def time_once(mode: str, config: RunConfig, sigma: float) -> float:
    """Seconds of one round of local training on client 0 in ``mode``."""
    dataset = cached_dataset(config)
    arrays, _ = dataset.partition(0)
    model = build_model(config, dataset)
    loader = make_loader(arrays, dataset.specs, config.batch_size, shuffle=True, seed=0)
    started = time.perf_counter()
    if mode == "plain":
        train(model, loader, dataset.specs, epochs=config.local_epochs,
              learning_rate=config.learning_rate, weights=loss_weights(config))
    else:
        train_private(model, loader, dataset.specs, epochs=config.local_epochs,
                      learning_rate=config.learning_rate, weights=loss_weights(config),
                      noise_multiplier=sigma, max_grad_norm=config.max_grad_norm,
                      grad_sample_mode=mode)
    return time.perf_counter() - started


def main() -> None:
    """Parse arguments, time every mode, write and print the figures."""
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per mode")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    overrides: dict[str, Any] = {"dataset": "smartwatch", **common.run_overrides(args)}
    if args.quick:
        overrides.setdefault("local-epochs", QUICK["local_epochs"])
    config = RunConfig.from_mapping(overrides)
    repeats = args.repeats or settings["repeats"]
    arrays, _ = cached_dataset(config).partition(0)
    sample_rate, _, planned = poisson_plan(len(arrays), config.batch_size, config.local_epochs,
                                           config.num_server_rounds)
    sigma = calibrate_noise_multiplier(8.0, 1e-5, sample_rate, planned)
    for mode in MODES:  # warm-up: imports, first-call compilation
        time_once(mode, config, sigma)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            seconds[mode].append(time_once(mode, config, sigma))
    medians = {mode: common.median(values) for mode, values in seconds.items()}
    ratios = {mode: common.ratio(medians[mode], medians["plain"]) for mode in GRAD_SAMPLE_MODES}
    fastest = min(GRAD_SAMPLE_MODES, key=lambda mode: medians[mode])
    figures = {f"{mode}_time_ratio": ratios[mode] for mode in GRAD_SAMPLE_MODES}
    figures.update({"fastest_mode": fastest,
                    "default_is_fastest": fastest == config.grad_sample_mode})
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"mode": "plain", "median_seconds": medians["plain"]},
        config={**config.to_mapping(), "repeats": repeats, "noise_multiplier": sigma,
                "sample_rate": sample_rate, "train_examples": len(arrays)},
        seconds=seconds, median_seconds=medians)
    common.print_table(f"DP-SGD time vs plain training ({NAME}, {repeats} repeats)", [
        *((f"{mode} median seconds", medians[mode]) for mode in MODES),
        *((f"{mode}_time_ratio", ratios[mode]) for mode in GRAD_SAMPLE_MODES),
        ("fastest_mode", fastest), ("result", str(path))])


if __name__ == "__main__":
    main()
