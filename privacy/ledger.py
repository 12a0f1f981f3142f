"""The server's privacy ledger: per device, what DP-SGD has spent; and central DP's spend.

The devices' replies (``records.DP_*``) carry each round's ``(σ, q, steps)``; the ledger keeps
every device's segments and composes them itself (:mod:`fedmosaic.privacy.accounting`), so its
ε is the server's own account, independent of the device's and exact across a server restart
(a resumed run appends to the restored segments). What the device reported is kept beside it.
Central DP's spend comes from :mod:`fedmosaic.privacy.central`. The ledger is
saved with every checkpoint (:meth:`PrivacyLedger.state_dict`) and restored on resume, shown in
TensorBoard (:meth:`PrivacyLedger.scalars`), in ``summary.json`` (``privacy``) and by
``fedmosaic privacy-report``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedmosaic import records
from fedmosaic.privacy.accounting import Segment, epsilon_spent

CAP_TOLERANCE = 1e-6
"""Relative slack on the cap: the device's and the server's accountants round differently."""


@dataclass
class LedgerEntry:
    """One device's line of the ledger.

    Attributes:
        epsilon_spent: ε of :attr:`segments` composed by the ledger's accountant.
        epsilon_reported: ε the device's own accountant reported last.
        epsilon_budget: Its budget (as its last reply reported).
        delta: δ at which ε is reported.
        noise_multiplier: σ of its DP-SGD.
        rounds_joined: Rounds in which it trained.
        refusals: Rounds in which it declined to train for lack of budget.
        over_cap: Rounds whose update the server refused because its own account of the
            reported ``(σ, q, steps)`` exceeded the device's cap, whatever the device said.
        segments: ``[σ, q, steps]`` of every round it trained, oldest first (an over-cap
            round's too: the server received that update).

    """

    epsilon_spent: float = 0.0
    epsilon_reported: float = 0.0
    epsilon_budget: float = math.inf
    delta: float = 0.0
    noise_multiplier: float = 0.0
    rounds_joined: list[int] = field(default_factory=list)
    refusals: list[int] = field(default_factory=list)
    over_cap: list[int] = field(default_factory=list)
    segments: list[list[float]] = field(default_factory=list)


@dataclass
class CentralEntry:
    """Central (user-level) DP's line: the Gaussian mechanism on the aggregate.

    Attributes:
        mode: ``server`` or ``client`` (where the updates are clipped).
        epsilon_spent: ε at :attr:`delta` over :attr:`releases` noisy aggregates.
        delta: δ at which ε is reported.
        round_noise_multipliers: Effective noise multiplier of each released round
            (:func:`~fedmosaic.privacy.central.round_noise_multiplier`); ε is recomputed
            from them.

    """

    mode: str
    epsilon_spent: float = 0.0
    delta: float = 0.0
    round_noise_multipliers: list[float] = field(default_factory=list)


@dataclass
class PrivacyLedger:
    """Per-device ledger keyed by partition id, plus the central-DP entry.

    Attributes:
        accountant: ``rdp`` or ``prv``, composing the devices' segments.
        devices: One :class:`LedgerEntry` per partition id.
        central: Central DP's entry, ``None`` without central DP.

    """

    accountant: str = "rdp"
    devices: dict[int, LedgerEntry] = field(default_factory=dict)
    central: CentralEntry | None = None

    def record_reply(self, server_round: int, metrics: Mapping[str, Any],
                     cap: float = math.inf) -> str:
        """Enter a DP-SGD training reply's metrics (checked by the caller); say what it was.

        Returns:
            ``"no-dp"`` for a reply without ``records.DP_EPSILON_SPENT`` (nothing changes);
            ``"refused"`` if the device declined to train; ``"over-cap"`` if the ledger's own
            ε with this round's segment exceeds ``cap`` (and the reported budget), whatever
            the device claims: the update must not be aggregated; else ``"trained"``.

        Raises:
            ValueError: If a DP reply lacks ``partition-id``, reports a negative ε or a
                malformed segment; ``ArithmeticError`` or ``MemoryError`` if the accountant
                cannot compose the segment. The ledger is then as it was.

        """
        if records.DP_EPSILON_SPENT not in metrics:
            return "no-dp"
        if records.PARTITION_ID not in metrics:
            raise ValueError(f"a DP-SGD reply must carry {records.PARTITION_ID!r}, got keys "
                             f"{sorted(metrics)}")
        spent = float(metrics[records.DP_EPSILON_SPENT])
        if not spent >= 0.0:
            raise ValueError(f"{records.DP_EPSILON_SPENT} must be >= 0, got {spent}")
        partition = int(metrics[records.PARTITION_ID])
        entry = self.devices.get(partition, LedgerEntry())
        noise = float(metrics.get(records.DP_NOISE_MULTIPLIER, entry.noise_multiplier))
        refused = bool(metrics.get(records.DP_REFUSED, 0))
        steps = int(metrics.get(records.DP_STEPS, 0))
        segments = list(entry.segments)
        delta = float(metrics.get(records.DP_DELTA, entry.delta))
        composed = entry.epsilon_spent
        if not refused and steps > 0:  # composed before anything is entered: it may raise
            segments.append([noise, float(metrics.get(records.DP_SAMPLE_RATE, 0.0)), steps])
            composed = epsilon_spent([Segment(s, q, int(n)) for s, q, n in segments], delta,
                                     self.accountant)
        self.devices[partition] = entry
        entry.epsilon_reported = spent
        entry.epsilon_budget = float(metrics.get(records.DP_EPSILON_BUDGET, entry.epsilon_budget))
        entry.delta, entry.noise_multiplier = delta, noise
        if refused:
            entry.refusals.append(server_round)
            return "refused"
        entry.segments, entry.epsilon_spent = segments, composed
        if entry.epsilon_spent > min(cap, entry.epsilon_budget) * (1.0 + CAP_TOLERANCE):
            entry.over_cap.append(server_round)
            return "over-cap"
        entry.rounds_joined.append(server_round)
        return "trained"

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars: ε spent per device, the maximum, refusals, central ε."""
        values = {f"privacy/epsilon_spent/partition_{pid}": entry.epsilon_spent
                  for pid, entry in sorted(self.devices.items())}
        if self.devices:
            values["privacy/epsilon_spent_max"] = max(e.epsilon_spent
                                                      for e in self.devices.values())
            values["privacy/refusals"] = float(sum(len(e.refusals)
                                                   for e in self.devices.values()))
            values["privacy/over_cap"] = float(sum(len(e.over_cap)
                                                   for e in self.devices.values()))
        if self.central is not None:
            values["privacy/central_epsilon"] = self.central.epsilon_spent
        return values

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable state (``summary.json``'s ``privacy`` section)."""
        return {
            "accountant": self.accountant,
            "devices": {str(pid): asdict(entry) for pid, entry in sorted(self.devices.items())},
            "central": asdict(self.central) if self.central is not None else None,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> PrivacyLedger:
        """Rebuild from :meth:`state_dict`.

        Raises:
            ValueError: If ``devices`` is missing.

        """
        if "devices" not in state:
            raise ValueError(f"privacy ledger state needs 'devices', got keys {sorted(state)}")
        central = state.get("central")
        return cls(
            accountant=str(state.get("accountant", "rdp")),
            devices={int(pid): LedgerEntry(**entry) for pid, entry in state["devices"].items()},
            central=CentralEntry(**central) if central is not None else None,
        )
