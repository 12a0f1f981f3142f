"""Running fedmosaic and the bare Flower baseline app side by side, timed and measured alike.

Shared by ``overhead_vs_flower.py`` and ``scale.py``. Both sides run on the same Ray
simulation runtime, each in child processes of this one:

* ours through ``fedmosaic.launch.runs.run_simulation`` (``fedmosaic run``), its round times
  stamped when each line of its ``history.jsonl`` appears;
* the baseline (``benchmarks/flower_baseline/``, Flower's quickstart layout on fedmosaic's
  model, data and training loop) through ``fedmosaic.simulation.engine.run_flower_app`` in
  ``python benchmarks/flower_comparison.py RUN_CONFIG_JSON``, stamped from its rounds file.

A run also reports its peak summed resident memory: every process below this one (the run's
launcher, the ServerApp, Ray's GCS, raylet and workers) sampled with ``psutil`` every
:data:`MEMORY_POLL_SECONDS`, and its start-up seconds: from launch to the end of round 1,
less one median round.
"""

from __future__ import annotations

import abc
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
import psutil

from fedmosaic.config import ConfigValue, RunConfig
from fedmosaic.launch.processes import ProcessGroup
from fedmosaic.launch.runs import flower_environment, run_simulation
from fedmosaic.server.recorder import HISTORY_FILE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BASELINE_APP_DIR = common.BENCHMARKS_DIR / "flower_baseline"
BASELINE_SERVERAPP = "flower_quickstart_baseline.server_app:app"
BASELINE_CLIENTAPP = "flower_quickstart_baseline.client_app:app"
BASELINE_ROUNDS_FILE = "rounds.jsonl"
POLL_SECONDS = 0.02
MEMORY_POLL_SECONDS = 0.5


class Poller(abc.ABC):
    """A thread that calls :meth:`poll` every ``poll_seconds`` inside a ``with`` block, and
    once more on leaving it."""

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.poll_seconds)

    @abc.abstractmethod
    def poll(self) -> None:
        """One sample."""


class PeakTreeMemory(Poller):
    """Peak of the summed RSS of every descendant of this process."""

    def __init__(self, poll_seconds: float = MEMORY_POLL_SECONDS) -> None:
        super().__init__(poll_seconds)
        self.peak_bytes = 0
        self.peak_processes = 0

    def poll(self) -> None:
        """Sum the RSS of the descendants now; keep the largest sum."""
        total, count = 0, 0
        for process in psutil.Process().children(recursive=True):
            try:
                total += process.memory_info().rss
                count += 1
            except psutil.Error:  # ended between listing and reading
                continue
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count

    @property
    def peak_gib(self) -> float:
        """The peak in GiB."""
        return self.peak_bytes / 2**30


class LineClock(Poller):
    """Stamps each complete line of a JSON-lines file with the wall-clock time it appeared."""

    def __init__(self, path: Path, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__(poll_seconds)
        self.path = path
        self.stamped: list[tuple[float, dict[str, Any]]] = []

    def poll(self) -> None:
        """Stamp the lines that appeared since the last poll."""
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
        "dataset": config.dataset,
        "samples-per-client": config.samples_per_client,
        "rounds-file": str(rounds_file),
    }
    defaults = baseline_defaults()
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise KeyError(f"baseline app's pyproject.toml lacks run-config keys {unknown}")
    return {**defaults, **values}


def startup_seconds(started: float, times: dict[int, float],
                    median_round: float | None) -> float | None:
    """Launch to the end of round 1, less one median round (``started``: ``time.time()``)."""
    if 1 not in times or median_round is None:
        return None
    return times[1] - started - median_round


def run_ours(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """One fedmosaic simulation; its round times stamped from ``history.jsonl``."""
    started, launched = time.perf_counter(), time.time()
    with LineClock(run_dir / HISTORY_FILE) as clock, PeakTreeMemory() as memory:
        summary = run_simulation(config.to_mapping(), out=run_dir, show_progress=False)
    durations = round_durations(clock.round_times())
    median_round = common.median(list(durations.values()))
    return {
        "side": "ours",
        "run_dir": str(run_dir),
        "round_seconds": durations,
        "median_round_seconds": median_round,
        "startup_seconds": startup_seconds(launched, clock.round_times(), median_round),
        "peak_rss_gib": memory.peak_gib,
        "peak_processes": memory.peak_processes,
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
    command = [sys.executable, str(Path(__file__).resolve()), json.dumps(run_config)]
    started, launched = time.perf_counter(), time.time()
    with LineClock(rounds_file) as clock, PeakTreeMemory() as memory, \
            ProcessGroup(env=flower_environment(run_dir)) as group:
        code = group.start(command, log_file).wait()
    wall = time.perf_counter() - started
    times = clock.round_times()
    if code != 0 or config.num_server_rounds not in times:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"baseline run ended with exit code {code} after rounds "
                           f"{sorted(times)}; log {log_file}:\n{tail}")
    durations = round_durations(times)
    median_round = common.median(list(durations.values()))
    rows = [row for _, row in clock.stamped]
    in_process = {int(row["round"]): float(row["time"]) for row in rows}
    return {
        "side": "baseline",
        "run_dir": str(run_dir),
        "round_seconds": durations,
        "median_round_seconds": median_round,
        "startup_seconds": startup_seconds(launched, times, median_round),
        "peak_rss_gib": memory.peak_gib,
        "peak_processes": memory.peak_processes,
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


if __name__ == "__main__":
    child_baseline(sys.argv[1])
