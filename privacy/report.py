"""A run's privacy ledger and its devices' risk scores as tables (``fedmosaic privacy-report``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.table import Table

from fedmosaic.privacy.ledger import PrivacyLedger


def load_ledger(run_dir: Path) -> PrivacyLedger:
    """The ledger of ``run_dir``: ``summary.json``'s, or the newest checkpoint's mid-run.

    Raises:
        ValueError: If the folder has neither, or they hold no ``privacy`` section.

    """
    summary = run_dir / "summary.json"
    if summary.is_file():
        state = json.loads(summary.read_text()).get("privacy")
    else:
        checkpoints = sorted((run_dir / "checkpoints").glob("round-*.pt"))
        if not checkpoints:
            raise ValueError(f"{run_dir} holds no summary.json and no checkpoints/round-*.pt; "
                             "expected a fedmosaic run folder")
        saved = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
        state = saved.get("server_state", {}).get("privacy")
    if state is None:
        raise ValueError(f"{run_dir} has no privacy ledger (a run from before the ledger)")
    return PrivacyLedger.from_state_dict(state)


def ledger_table(ledger: PrivacyLedger) -> Table:
    """One row per device (partition), and one for central DP if the run used it."""
    table = Table(title=f"Privacy ledger ({ledger.accountant.upper()} accountant)")
    for name in ("device", "ε spent", "ε budget", "δ", "σ", "rounds joined", "refusals"):
        table.add_column(name, justify="right")
    for partition, entry in sorted(ledger.devices.items()):
        table.add_row(f"partition {partition}", f"{entry.epsilon_spent:.4f}",
                      f"{entry.epsilon_budget:g}", f"{entry.delta:g}",
                      f"{entry.noise_multiplier:.4f}", str(len(entry.rounds_joined)),
                      ", ".join(map(str, entry.refusals)) or "-")
    if ledger.central is not None:
        central = ledger.central
        table.add_row(f"central ({central.mode})", f"{central.epsilon_spent:.4f}", "-",
                      f"{central.delta:g}", "-", str(len(central.round_noise_multipliers)), "-")
    if not ledger.devices and ledger.central is None:
        table.caption = "no DP-SGD or central DP in this run (dp=false, central-dp=none)"
    return table


RISK_CRITERIA = ("channel", "sensitivity", "context", "resources")


def risk_table(run_dir: Path) -> Table | None:
    """One row per node scored by risk perception (``history.jsonl``'s ``risk``).

    A row: the rounds the node was scored in, its mean and latest risk, and the latest
    round's criteria. ``None`` if the run scored no device.
    """
    history = run_dir / "history.jsonl"
    if not history.is_file():
        return None
    scored: dict[str, list[dict[str, float]]] = {}
    for line in history.read_text().splitlines():
        for node, values in (json.loads(line).get("risk") or {}).items():
            scored.setdefault(node, []).append(values)
    if not scored:
        return None
    table = Table(title="Risk perception (per node; criteria of the latest round)")
    for name in ("node", "rounds", "mean risk", "latest risk", *RISK_CRITERIA):
        table.add_column(name, justify="right")
    for node, rows in sorted(scored.items(), key=lambda item: int(item[0])):
        latest = rows[-1]
        table.add_row(node, str(len(rows)), f"{sum(r['risk'] for r in rows) / len(rows):.3f}",
                      f"{latest['risk']:.3f}",
                      *(f"{latest[f'risk-{name}']:.3f}" for name in RISK_CRITERIA))
    return table
