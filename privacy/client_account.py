"""A device's DP-SGD privacy account: its spent history, its budget and its noise multiplier.

The account is state, kept apart from the math (:mod:`fedmosaic.privacy.accounting`): the
``(σ, q, steps)`` segments the device has run in this run, the budget and the σ calibrated for
it. It lives in the ClientApp's ``context.state`` (a ``ConfigRecord``) between rounds and, when
the node config names a ``state-dir``, also in a JSON file there, so that a restarted SuperNode
does not forget what it spent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord

from fedmosaic.privacy.accounting import Segment, epsilon_spent


@dataclass
class ClientPrivacyAccount:
    """The DP-SGD history of one device in one run.

    Attributes:
        history: Segments run so far, oldest first.
        epsilon_budget: The ε budget :attr:`noise_multiplier` was calibrated for (0.0: none
            yet).
        noise_multiplier: σ calibrated for :attr:`epsilon_budget` (0.0: none yet).

    """

    history: list[Segment] = field(default_factory=list)
    epsilon_budget: float = 0.0
    noise_multiplier: float = 0.0

    def spent(self, delta: float, accountant: str) -> float:
        """ε spent at ``delta`` by :attr:`history`."""
        return epsilon_spent(self.history, delta, accountant)

    def spent_after(self, segment: Segment, delta: float, accountant: str) -> float:
        """ε at ``delta`` that :attr:`history` plus ``segment`` would have spent."""
        return epsilon_spent([*self.history, segment], delta, accountant)

    def to_record(self) -> ConfigRecord:
        """The account as a ``ConfigRecord`` (for ``context.state``)."""
        return ConfigRecord({
            "noise-multiplier": [s.noise_multiplier for s in self.history],
            "sample-rate": [s.sample_rate for s in self.history],
            "steps": [s.steps for s in self.history],
            "epsilon-budget": self.epsilon_budget,
            "calibrated-noise-multiplier": self.noise_multiplier,
        })

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClientPrivacyAccount:
        """Rebuild from :meth:`to_record`'s output (or its JSON form).

        Raises:
            ValueError: If a key is missing or the history lists differ in length.

        """
        if "budget" in record and "epsilon-budget" not in record:  # written before the rename
            record = {**record, "epsilon-budget": record["budget"]}
        expected = ("noise-multiplier", "sample-rate", "steps", "epsilon-budget",
                    "calibrated-noise-multiplier")
        missing = [key for key in expected if key not in record]
        if missing:
            raise ValueError(f"privacy account record lacks keys {missing}; expected {expected}")
        sigmas, rates, steps = (list(record[k]) for k in expected[:3])
        if not len(sigmas) == len(rates) == len(steps):
            raise ValueError(
                "privacy account history lists must have equal lengths, got "
                f"{len(sigmas)} noise multipliers, {len(rates)} sample rates, {len(steps)} steps"
            )
        return cls(
            history=[Segment(float(s), float(q), int(n))
                     for s, q, n in zip(sigmas, rates, steps, strict=True)],
            epsilon_budget=float(record["epsilon-budget"]),
            noise_multiplier=float(record["calibrated-noise-multiplier"]),
        )

    def save(self, path: Path) -> None:
        """Write the account to ``path`` as JSON, atomically (write, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(dict(self.to_record())))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> ClientPrivacyAccount:
        """Read an account :meth:`save` wrote; an empty account if ``path`` does not exist."""
        if not path.is_file():
            return cls()
        return cls.from_record(json.loads(path.read_text()))
