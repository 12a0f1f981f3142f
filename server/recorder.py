"""Everything a run leaves behind in its run folder.

``runs/<run-name>/`` receives, as the run goes:

* ``history.jsonl`` — one JSON line per round (also what ``fedmosaic run`` follows to show
  progress);
* ``tensorboard/`` — TensorBoard scalars per round;
* ``checkpoints/round-NNN.pt`` — global model state dict and server state after each round;

and at the end ``summary.json`` and ``summary.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from fedmosaic.data.report import PartitionReport  # noqa: E402

HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "summary.png"
PARTITIONS_PLOT_FILE = "partitions.png"
MAX_PARTITION_BARS = 60
"""Devices drawn as stacked bars in ``partitions.png``; more are drawn as a heatmap."""
"""Training samples per device and label, drawn before the first round."""


@dataclass
class RoundRecord:
    """What one round produced. ``accuracy`` and ``loss`` are the central evaluation."""

    round: int
    accuracy: float
    loss: float
    bytes_up: int
    bytes_down: int
    seconds: float
    simulated_seconds: float | None = None
    """End of the round on the simulated clock (``server/latency.py``), if one runs."""
    train_loss: float | None = None
    federated_accuracy: float | None = None
    federated_loss: float | None = None
    device_accuracy: float | None = None
    """Mean over the evaluated devices of each one's accuracy on its own held-out data, with
    the model it predicts with (its personal parameters over the global ones under
    ``personalization``); each device counts once, whatever its data size."""
    device_missing_modality: dict[str, dict[str, float]] | None = None
    """Per modality, those models removing it at prediction time, on the devices' samples that
    hold it and another modality, each device counting once: ``samples`` (their total),
    ``accuracy_with``, ``accuracy_without`` (:mod:`fedmosaic.models.missing_modality`)."""
    device_missing_modality_drop_points: float | None = None
    """The worst of those drops, in points."""
    replies: int = 0
    failed_replies: int = 0
    bytes_device_to_edge: int | None = None
    """Training replies devices sent to their edges (``None`` without an edge tier)."""
    bytes_edge_to_cloud: int | None = None
    """Edge aggregates the edges sent to the cloud (``None`` without an edge tier)."""
    edge_rejected_updates: int | None = None
    """Device updates the edges rejected (malformed payload or failed validation)."""
    edge_rejected_reasons: dict[str, int] | None = None
    """Those rejections by reason (simulated edge tier)."""
    rejected: int | None = None
    """Training replies the cloud rejected: its update validation (``server/validation.py``)
    and its privacy ledger (``dp-metadata``, ``dp-over-cap``)."""
    rejected_reasons: dict[str, int] | None = None
    """Those rejections by reason (:data:`~fedmosaic.server.validation.REASONS`)."""
    evaluate_rejected: int | None = None
    """Evaluation replies the cloud rejected (malformed metrics)."""
    released: int | None = None
    """Anonymized records written to ``releases/`` (``anonymizer-release``)."""
    release_suppressed: int | None = None
    """Released records suppressed for k-anonymity of their metadata."""
    release_rejected: int | None = None
    """Releases dropped as malformed (their model updates went on to validation)."""
    risk: dict[str, dict[str, float]] | None = None
    """Per node id: its risk score and the criteria it was fused from (``risk-perception``)."""
    secure_aggregation: dict[str, object] | None = None
    """Secure aggregation's own exchanges: ``bytes_down`` / ``bytes_up`` (also in the round's
    totals), ``cohort`` (devices that advertised keys) and ``dropped`` devices per stage."""
    controller: dict[str, dict[str, float]] | None = None
    """Per device: the controller's action (spend share, knobs), the risk and budget it saw,
    and the reward it earned (``controller``)."""


@dataclass
class RunRecorder:
    """Writes history, TensorBoard scalars, checkpoints, ``summary.json`` and the plot."""

    run_dir: Path
    config: dict[str, Any]
    history: list[RoundRecord] = field(default_factory=list)
    initial_accuracy: float | None = None
    partitions: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.run_dir / HISTORY_FILE).write_text(  # a continued run keeps its earlier rounds
            "".join(json.dumps(asdict(r)) + "\n" for r in self.history))
        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self._started = time.time()

    def record_round(self, record: RoundRecord) -> None:
        """Append a round to the history, TensorBoard and ``history.jsonl``."""
        self.history.append(record)
        for name, value in asdict(record).items():
            if isinstance(value, dict):
                for key, entry in value.items():  # counts by reason, or per-node metrics
                    leaves = entry.items() if isinstance(entry, dict) else [("", entry)]
                    for leaf, number in leaves:
                        tag = f"round/{name}/{key}" + (f"/{leaf}" if leaf else "")
                        self._writer.add_scalar(tag, number, record.round)
            elif name != "round" and value is not None:
                self._writer.add_scalar(f"round/{name}", value, record.round)
        self._writer.flush()
        with (self.run_dir / HISTORY_FILE).open("a") as handle:
            handle.write(json.dumps(asdict(record)) + "\n")

    def add_scalars(self, scalars: dict[str, float], server_round: int) -> None:
        """Write extra TensorBoard scalars (``tag → value``) for ``server_round``."""
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, server_round)
        self._writer.flush()

    def checkpoint(self, server_round: int, model_state: dict[str, torch.Tensor],
                   server_state: dict[str, Any]) -> Path:
        """Save the global model and the server state reached after ``server_round``."""
        path = self.run_dir / "checkpoints" / f"round-{server_round:03d}.pt"
        torch.save(
            {
                "round": server_round,
                "model_state": model_state,
                "server_state": server_state,
                "history": [asdict(r) for r in self.history],
                "initial_accuracy": self.initial_accuracy,
                "config": self.config,
            },
            path,
        )
        return path

    def record_partitions(self, report: PartitionReport, warnings: list[str]) -> None:
        """Keep the partition report for ``summary.json`` and draw ``partitions.png``."""
        self.partitions = {**report.to_dict(), "warnings": warnings}
        devices = report.devices
        title = f"Training samples per device and label ({report.partitioner or 'dataset'})"
        if len(devices) > MAX_PARTITION_BARS:  # one image, whatever the number of devices
            counts = np.array([d.label_counts for d in devices], dtype=float).T
            fig, ax = plt.subplots(figsize=(9.0, 3.6))
            image = ax.imshow(counts, aspect="auto", interpolation="nearest", cmap="viridis",
                              extent=(-0.5, len(devices) - 0.5, report.classes - 0.5, -0.5))
            fig.colorbar(image, ax=ax, label="samples")
            ax.set(title=title, xlabel=f"device (the first {len(devices)})", ylabel="label")
        else:
            fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(devices) + 2), 3.6))
            bottom = np.zeros(len(devices))
            for label in range(report.classes):
                counts = np.array([d.label_counts[label] for d in devices], dtype=float)
                ax.bar([d.partition_id for d in devices], counts, bottom=bottom,
                       label=str(label))
                bottom += counts
            ax.set(title=title, xlabel="device (partition id)", ylabel="samples")
            if report.classes <= 20:
                ax.legend(title="label", fontsize="small", ncols=2, loc="upper right")
        fig.tight_layout()
        fig.savefig(self.run_dir / PARTITIONS_PLOT_FILE, dpi=110)
        plt.close(fig)

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` and ``summary.png``; close TensorBoard; return the summary."""
        self._writer.close()
        last = self.history[-1] if self.history else None
        summary: dict[str, Any] = {
            "rounds": len(self.history),
            "final_accuracy": last.accuracy if last else self.initial_accuracy,
            "final_loss": last.loss if last else None,
            "final_device_accuracy": last.device_accuracy if last else None,
            "final_device_missing_modality_drop_points":
                last.device_missing_modality_drop_points if last else None,
            "initial_accuracy": self.initial_accuracy,
            "total_bytes_up": sum(r.bytes_up for r in self.history),
            "total_bytes_down": sum(r.bytes_down for r in self.history),
            "wall_seconds": time.time() - self._started,
            "history": [asdict(r) for r in self.history],
            "config": self.config,
            "partitions": self.partitions,
            **(extra or {}),
        }
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        self._plot()
        return summary

    def _plot(self) -> None:
        rounds = [r.round for r in self.history]
        fig, (ax_acc, ax_loss, ax_bytes) = plt.subplots(1, 3, figsize=(13, 3.6))
        ax_acc.plot(rounds, [r.accuracy for r in self.history], marker="o", label="central")
        federated = [(r.round, r.device_accuracy) for r in self.history
                     if r.device_accuracy is not None]
        if federated:
            ax_acc.plot(*zip(*federated, strict=True), marker="s", label="devices (own data)")
        ax_acc.set(title="Accuracy", xlabel="round", ylim=(0, 1))
        ax_acc.legend()
        ax_loss.plot(rounds, [r.loss for r in self.history], marker="o", label="central")
        trained = [(r.round, r.train_loss) for r in self.history if r.train_loss is not None]
        if trained:
            ax_loss.plot(*zip(*trained, strict=True), marker="s", label="train (clients)")
        ax_loss.set(title="Loss", xlabel="round")
        ax_loss.legend()
        ax_bytes.bar([x - 0.2 for x in rounds], [r.bytes_down / 1e6 for r in self.history],
                     width=0.4, label="down")
        ax_bytes.bar([x + 0.2 for x in rounds], [r.bytes_up / 1e6 for r in self.history],
                     width=0.4, label="up")
        ax_bytes.set(title="Traffic per round", xlabel="round", ylabel="MB")
        ax_bytes.legend()
        fig.suptitle(f"{self.run_dir.name}")
        fig.tight_layout()
        fig.savefig(self.run_dir / PLOT_FILE, dpi=110)
        plt.close(fig)
