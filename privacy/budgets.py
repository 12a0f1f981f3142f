"""Per-device ε budgets as the run assigns them: the ``privacy-budgets`` file, else the run's.

Both the device (which may be told a different budget: its node config, the server's training
config) and the server's ledger (which enforces the cap itself) start from
:func:`assigned_epsilon_budget`.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from fedmosaic.config import RunConfig, tomllib


@functools.lru_cache(maxsize=8)
def read_budget_file(path: str) -> dict[int, float]:
    """``partition-id → ε`` from a TOML file of lines ``0 = 3.0`` (``privacy-budgets``).

    Raises:
        ValueError: If a key is not a partition id or a value not a finite ε > 0.

    """
    with Path(path).expanduser().open("rb") as handle:
        table = tomllib.load(handle)
    budgets: dict[int, float] = {}
    for key, value in table.items():
        if not key.isdigit():
            raise ValueError(f"privacy-budgets file {path}: keys must be partition ids "
                             f"(0, 1, ...), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0.0 < value < math.inf):
            raise ValueError(f"privacy-budgets file {path}: partition {key} needs a finite "
                             f"epsilon > 0, got {value!r}")
        budgets[int(key)] = float(value)
    return budgets


def assigned_epsilon_budget(config: RunConfig, partition_id: int) -> float:
    """Device ``partition_id``'s budget: its ``privacy-budgets`` line, else the run's.

    Raises:
        ValueError: If the budgets file is malformed.
    """
    if config.privacy_budgets:
        file_budgets = read_budget_file(config.privacy_budgets)
        if partition_id in file_budgets:
            return file_budgets[partition_id]
    return config.dp_epsilon_budget
