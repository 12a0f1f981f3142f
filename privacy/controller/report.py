"""The controller's decisions of a run as a table and a figure (``fedmosaic privacy-report``).

Both read ``history.jsonl``'s ``controller`` entries: per round and device, the spend share,
the knobs, the risk and the budget left that the controller saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

FIGURE_FILE = "controller.png"
"""The figure's name in the run folder."""


def controller_rounds(run_dir: Path) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """``device → [(round, decision), ...]`` from the run's ``history.jsonl`` (empty if none)."""
    history = Path(run_dir) / "history.jsonl"
    devices: dict[str, list[tuple[int, dict[str, float]]]] = {}
    if not history.is_file():
        return devices
    for line in history.read_text().splitlines():
        record = json.loads(line)
        for device, decision in (record.get("controller") or {}).items():
            devices.setdefault(device, []).append((int(record["round"]), decision))
    return devices


def controller_table(run_dir: Path) -> Table | None:
    """One row per device: rounds, mean spend share, mean risk, mean strength, budget left."""
    devices = controller_rounds(run_dir)
    if not devices:
        return None
    table = Table(title="Privacy controller (per device, means over its rounds)")
    for name in ("device", "rounds", "spend share", "risk", "strength", "noise", "discard",
                 "budget left at last decision"):
        table.add_column(name, justify="right")
    for device, rows in sorted(devices.items(), key=lambda item: _order(item[0])):
        def mean(key: str, rows: list = rows) -> str:
            values = [d[key] for _, d in rows if key in d]
            return f"{sum(values) / len(values):.3f}" if values else "-"

        table.add_row(device, str(len(rows)), mean("spend-share"), mean("risk"),
                      mean("strength"), mean("noise"), mean("discard"),
                      f"{rows[-1][1]['budget-left']:.3f}")
    return table


def controller_figure(run_dir: Path) -> Path | None:
    """Draw each device's budget used (share of its cap) and risk over rounds to a PNG."""
    devices = controller_rounds(run_dir)
    if not devices:
        return None
    fig, (ax_budget, ax_risk) = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for device, rows in sorted(devices.items(), key=lambda item: _order(item[0])):
        rounds = [r for r, _ in rows]
        ax_budget.plot(rounds, [1.0 - d["budget-left"] for _, d in rows], marker=".",
                       label=device)
        ax_risk.plot(rounds, [d["risk"] for _, d in rows], marker=".", label=device)
    ax_budget.set(title="Budget used before each round (share of the cap)", xlabel="round",
                  ylim=(0, 1.05))
    ax_risk.set(title="Risk the controller saw", xlabel="round", ylim=(0, 1.05))
    ax_risk.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(run_dir) / FIGURE_FILE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _order(device: str) -> tuple[str, int]:
    name, _, number = device.rpartition("-")
    return name, int(number) if number.isdigit() else 0
