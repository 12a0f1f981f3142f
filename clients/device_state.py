"""What a device keeps between rounds outside the model it receives: files and personal layers.

A device's state lives in its ``context.state`` (kept by the SuperNode, or by the simulation
for each virtual node, for the whole run) and, when its node config names a ``state-dir``, in
files there too, so that a restarted SuperNode picks up where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

from fedmosaic import records
from fedmosaic.config import RunConfig


def device_state_file(config: RunConfig, context: Context, partition_id: int,
                      name: str) -> Path | None:
    """``state-dir/<run>/partition-<id>-<name>``, or ``None`` without a node-config ``state-dir``.

    ``<run>`` is the run name, or ``run-<run id>`` if the run has none.
    """
    state_dir = context.node_config.get(records.STATE_DIR)
    if not state_dir:
        return None
    run_key = config.run_name or f"run-{context.run_id}"
    return Path(str(state_dir)).expanduser() / run_key / f"partition-{partition_id}-{name}"


class PersonalStore:
    """The device's personal parameters (``personalization``): in ``context.state`` and on disk.

    Args:
        config: The run config.
        context: The ClientApp's context.
        partition_id: The device's partition.

    """

    FILE = "personal.pt"

    def __init__(self, config: RunConfig, context: Context, partition_id: int) -> None:
        self._context = context
        self._path = device_state_file(config, context, partition_id, self.FILE)

    def load(self) -> dict[str, torch.Tensor] | None:
        """The stored parameters by ``state_dict`` key, or ``None`` before the first save."""
        if records.PERSONAL in self._context.state:
            return self._context.state[records.PERSONAL].to_torch_state_dict()
        if self._path is not None and self._path.is_file():
            return torch.load(self._path, weights_only=True)
        return None

    def apply(self, model: torch.nn.Module) -> None:
        """Load the stored parameters into ``model`` over what it holds (none stored: no-op)."""
        stored = self.load()
        if stored is not None:
            model.load_state_dict(stored, strict=False)

    def save(self, tensors: dict[str, torch.Tensor]) -> None:
        """Keep ``tensors`` (copied) for the next round and, with a ``state-dir``, on disk."""
        kept = {key: value.detach().clone() for key, value in tensors.items()}
        self._context.state[records.PERSONAL] = ArrayRecord(kept)
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(kept, self._path)
