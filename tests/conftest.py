"""Shared fixtures: keep torch to one thread per process on the 2-core CI machine."""

from pathlib import Path

import pytest
import torch

from fedmosaic.simulation.processes import processes_with_env

torch.set_num_threads(1)


@pytest.fixture
def leftover_processes():
    """Callable: live processes started for the run folder ``run_dir`` (via its FLWR_HOME)."""
    return lambda run_dir: processes_with_env("FLWR_HOME", str(Path(run_dir) / ".flwr"))
