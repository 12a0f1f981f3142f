"""Per-round time of fedmosaic's app versus a bare Flower quickstart app doing the same work.

Claim:
    fedmosaic's ServerApp and ClientApp (run-config validation, traffic metering, run folder
    with history, TensorBoard scalars and a checkpoint every round) add little to a round
    over plain Flower: at most 15 % more wall-clock time per round.

Method:
    Both apps run on the same Ray simulation runtime (``fedmosaic.simulation.engine``: one
    CPU per ClientApp actor, 10 SuperNodes, one partition per smartwatch subject), each in a
    child process started in a ``ProcessGroup`` so Ray goes away with it, ours via
    ``fedmosaic.launch.runs.run_simulation`` and the baseline via ``run_flower_app``.
    Both do the same work per round with the same settings (fedmosaic's defaults from its
    ``pyproject.toml``, or ``--local-epochs``): FedAvg with fraction-train 1.0 (10 clients,
    ``local-epochs`` epochs of ``fedmosaic.models.training.train`` on the same model and
    data), fraction-evaluate 0.5 (5 clients evaluate locally) and a central evaluation on
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

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common

from fedmosaic.config import ConfigValue, RunConfig
from fedmosaic.launch.processes import ProcessGroup
from fedmosaic.launch.runs import flower_environment, run_simulation
from fedmosaic.server.recorder import HISTORY_FILE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NAME = "overhead_vs_flower"
TARGET_RATIO = 1.15
BASELINE_APP_DIR = common.BENCHMARKS_DIR / "flower_baseline"
BASELINE_SERVERAPP = "flower_quickstart_baseline.server_app:app"
BASELINE_CLIENTAPP = "flower_quickstart_baseline.client_app:app"
BASELINE_ROUNDS_FILE = "rounds.jsonl"
POLL_SECONDS = 0.02


class LineClock:
    """Stamps each complete line of a JSON-lines file with the wall-clock time it appeared."""

    def __init__(self, path: Path, poll_seconds: float = POLL_SECONDS) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self.stamped: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LineClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            time.sleep(self.poll_seconds)

    def _poll(self) -> None:
        now = time.time()
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        lines = text.split("\n")[:-1]  # complete lines only
        for line in lines[len(self.stamped):]:
            self.stamped.append((now, json.loads(line)))

    def round_times(self) -> dict[int, float]:
        """``{round: time its line appeared}``."""
        return {int(row["round"]): stamp for stamp, row in self.stamped}


def round_durations(times: dict[int, float]) -> dict[int, float]:
    """``{r: times[r] - times[r-1]}`` for every ``r >= 2`` with both times known."""
    return {r: times[r] - times[r - 1] for r in sorted(times) if r >= 2 and r - 1 in times}


def baseline_defaults() -> dict[str, ConfigValue]:
    """The baseline app's ``[tool.flwr.app.config]``."""
    with (BASELINE_APP_DIR / "pyproject.toml").open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def baseline_run_config(config: RunConfig, rounds_file: Path) -> dict[str, ConfigValue]:
    """The baseline's run config holding the same settings as fedmosaic's ``config``."""
    values: dict[str, ConfigValue] = {
        "num-server-rounds": config.num_server_rounds,
        "num-clients": config.num_clients,
        "fraction-train": config.fraction_train,
        "fraction-evaluate": config.fraction_evaluate,
        "local-epochs": config.local_epochs,
        "lr": config.learning_rate,
        "batch-size": config.batch_size,
        "seed": config.seed,
        "embed-dim": config.embed_dim,
        "num-experts": config.num_experts,
        "kl-weight": config.kl_weight,
        "consistency-weight": config.consistency_weight,
        "window-seconds": config.window_seconds,
        "rounds-file": str(rounds_file),
    }
    defaults = baseline_defaults()
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise KeyError(f"baseline app's pyproject.toml lacks run-config keys {unknown}")
    return {**defaults, **values}


def run_ours(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """One fedmosaic simulation; its round times stamped from ``history.jsonl``."""
    started = time.perf_counter()
    with LineClock(run_dir / HISTORY_FILE) as clock:
        summary = run_simulation(config.to_mapping(), out=run_dir, show_progress=False)
    durations = round_durations(clock.round_times())
    return {
        "side": "ours",
        "run_dir": str(run_dir),
        "round_seconds": durations,
        "median_round_seconds": common.median(list(durations.values())),
        "wall_seconds": time.perf_counter() - started,
        "final_accuracy": summary["final_accuracy"],
        # The app's own per-round "seconds" leave out its recording and checkpointing.
        "self_reported_round_seconds": {row["round"]: row["seconds"]
                                        for row in summary["history"]},
    }


def run_baseline(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """One baseline simulation in a child process; its round times from its rounds file."""
    run_dir.mkdir(parents=True, exist_ok=False)
    rounds_file = run_dir / BASELINE_ROUNDS_FILE
    run_config = baseline_run_config(config, rounds_file)
    log_file = run_dir / "simulation.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child-baseline",
               json.dumps(run_config)]
    started = time.perf_counter()
    with LineClock(rounds_file) as clock, \
            ProcessGroup(env=flower_environment(run_dir)) as group:
        code = group.start(command, log_file).wait()
    wall = time.perf_counter() - started
    times = clock.round_times()
    if code != 0 or config.num_server_rounds not in times:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"baseline run ended with exit code {code} after rounds "
                           f"{sorted(times)}; log {log_file}:\n{tail}")
    durations = round_durations(times)
    rows = [row for _, row in clock.stamped]
    in_process = {int(row["round"]): float(row["time"]) for row in rows}
    return {
        "side": "baseline",
        "run_dir": str(run_dir),
        "round_seconds": durations,
        "median_round_seconds": common.median(list(durations.values())),
        "wall_seconds": wall,
        "final_accuracy": rows[-1]["accuracy"],
        # Stamped inside the ServerApp instead of by this script's polling (cross-check).
        "in_process_round_seconds": round_durations(in_process),
    }


def child_baseline(run_config_json: str) -> None:
    """Child-process entry: run the baseline app on the Ray simulation runtime."""
    from fedmosaic.simulation.engine import run_flower_app

    run_config = json.loads(run_config_json)
    # Flower puts app_dir on sys.path when it loads the apps; do it before Ray starts too,
    # so the actors (PYTHONPATH = the driver's sys.path) can import the app's package.
    sys.path.insert(0, str(BASELINE_APP_DIR))
    run_flower_app(
        app_dir=BASELINE_APP_DIR,
        serverapp=BASELINE_SERVERAPP,
        clientapp=BASELINE_CLIENTAPP,
        run_config=run_config,
        num_supernodes=int(run_config["num-clients"]),
    )


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
    parser.add_argument("--child-baseline", metavar="RUN_CONFIG_JSON",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_baseline is not None:
        child_baseline(args.child_baseline)
        return

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
