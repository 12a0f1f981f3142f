"""A run resumed into its own folder: it continues, rather than starting again from a checkpoint.

``resume-from`` takes any checkpoint. When the checkpoint lies in the run's own folder
(``<run>/checkpoints/round-NNN.pt``, as ``fedmosaic deploy-local --resume RUN`` and a
restarted server use it), the run goes on where it stopped: ``num-server-rounds`` stays the
run's total, so ``num-server-rounds - NNN`` rounds are left; rounds are numbered on from
``NNN + 1`` in ``history.jsonl``, TensorBoard and the checkpoints; the history and first
accuracy recorded before the stop are kept. A checkpoint from another folder starts a new run
from its model and ledger, which numbers its own rounds from 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedmosaic.server.recorder import RoundRecord


@dataclass(frozen=True)
class Continuation:
    """What a run continued from its own checkpoint carries on (nothing for a new run)."""

    rounds_done: int = 0
    """Rounds the run completed before it stopped."""
    history: list[RoundRecord] = field(default_factory=list)
    """Those rounds, as recorded."""
    initial_accuracy: float | None = None
    """The central accuracy of the run's first model."""
    run_token: str = ""
    """The run's token (``records.RUN_TOKEN``), empty for a new run."""

    @classmethod
    def of(cls, checkpoint: Path, run_dir: Path, num_server_rounds: int) -> Continuation:
        """The continuation that ``checkpoint`` gives a run in ``run_dir`` (module docstring).

        Raises:
            ValueError: If the checkpoint is the run's and it already ran every round.
        """
        if checkpoint.resolve().parent != (run_dir / "checkpoints").resolve():
            return cls()
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        rounds_done = int(saved.get("round", 0))
        if rounds_done >= num_server_rounds:
            raise ValueError(f"resume-from {checkpoint}: the run already completed round "
                             f"{rounds_done} of num-server-rounds={num_server_rounds}; raise "
                             f"num-server-rounds to run more")
        return cls(rounds_done, [RoundRecord(**entry) for entry in saved.get("history", [])],
                   saved.get("initial_accuracy"),
                   str(saved.get("server_state", {}).get("run_token", "")))
