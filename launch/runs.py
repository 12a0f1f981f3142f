"""Launch a run in child processes, follow its progress, and collect its summary.

Shared by ``fedmosaic run`` (Ray simulation) and ``fedmosaic deploy-local`` (SuperLink and
SuperNodes): both resolve the run folder up front, start their processes in a
:class:`ProcessGroup`, show a progress bar fed by the run's ``history.jsonl``, and read
``summary.json`` when the ServerApp is done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedmosaic.config import ConfigValue, RayResources, RunConfig
from fedmosaic.data.datasets import is_file_dataset
from fedmosaic.launch.processes import ProcessGroup
from fedmosaic.server.recorder import HISTORY_FILE, SUMMARY_FILE


class RunFailedError(RuntimeError):
    """A launched run ended without writing its summary."""


def resolve_run(overrides: dict[str, ConfigValue], out: Path | None) -> tuple[RunConfig, Path]:
    """Validate the config and fix the run folder; ``out`` wins over ``out-dir/run-name``.

    A data file named by a relative path (``dataset = data.npz``) is made absolute, so every
    process of the run finds it whatever its working directory.
    """
    if out is not None:
        out = Path(out).expanduser().resolve()
        overrides = {**overrides, "out-dir": str(out.parent), "run-name": out.name}
    dataset = str(overrides.get("dataset", ""))
    if is_file_dataset(dataset):
        overrides = {**overrides, "dataset": str(Path(dataset).expanduser().resolve())}
    run_dir = RunConfig.from_mapping(overrides).run_dir()
    config = RunConfig.from_mapping(
        {**overrides, "out-dir": str(run_dir.parent), "run-name": run_dir.name}
    )
    if (run_dir / SUMMARY_FILE).exists():
        raise FileExistsError(
            f"run folder {run_dir} already holds a finished run; choose another --out or "
            "run-name"
        )
    return config, run_dir


def follow(
    run_dir: Path,
    total_rounds: int,
    is_done: Callable[[], int | None],
    show_progress: bool = True,
    poll_seconds: float = 0.5,
) -> int:
    """Show a progress bar from ``history.jsonl`` until ``is_done()`` returns an exit code."""
    history = run_dir / HISTORY_FILE
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        disable=not show_progress, transient=False,
    ) as progress:
        task = progress.add_task("rounds", total=total_rounds, status="starting")
        while True:
            code = is_done()
            rows = _read_history(history)
            if rows:
                last = rows[-1]
                progress.update(task, completed=len(rows),
                                status=f"accuracy {last['accuracy']:.3f}  loss "
                                       f"{last['loss']:.3f}")
            if code is not None:
                return code
            time.sleep(poll_seconds)


def _read_history(path: Path) -> list[dict[str, Any]]:
    """Rounds recorded so far; a line still being written (no newline yet) is skipped."""
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def read_summary(run_dir: Path, log_file: Path, code: int) -> dict[str, Any]:
    """The run's ``summary.json``; :class:`RunFailedError` with the log's tail if missing."""
    summary = run_dir / SUMMARY_FILE
    if code == 0 and summary.exists():
        return json.loads(summary.read_text())
    tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:]) \
        if log_file.exists() else "(no log)"
    raise RunFailedError(
        f"the run ended with exit code {code} and no {SUMMARY_FILE} in {run_dir}; "
        f"log {log_file}:\n{tail}"
    )


def run_simulation(overrides: dict[str, ConfigValue], out: Path | None = None,
                   show_progress: bool = True,
                   resources: RayResources | None = None) -> dict[str, Any]:
    """Run a Ray simulation in a child process and return its summary.

    ``resources``: an existing Ray cluster to join and what each ClientApp reserves
    (default: a private Ray, one CPU per ClientApp).
    """
    config, run_dir = resolve_run(overrides, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = run_dir / "simulation.log"
    command = [sys.executable, "-m", "fedmosaic.simulation.engine",
               json.dumps(config.to_mapping())]
    if resources is not None:
        command += ["--resources", json.dumps(dataclasses.asdict(resources))]
    with ProcessGroup(env=flower_environment(run_dir)) as group:
        process = group.start(command, log_file)
        code = follow(run_dir, config.num_server_rounds, process.poll, show_progress)
    return read_summary(run_dir, log_file, code)


def flower_environment(run_dir: Path) -> dict[str, str]:
    """Environment for Flower and Ray children: private state, no telemetry, no installs.

    ``PATH`` starts with this Python's script folder: the SuperLink and SuperNodes start
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name.
    """
    scripts = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")]),
        "FLWR_HOME": str(run_dir / ".flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_DEDUP_LOGS": "0",
        "PYTHONUNBUFFERED": "1",
    }
