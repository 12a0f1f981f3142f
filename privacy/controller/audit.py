r"""The controller's tamper-evident audit log: one hash-chained JSON line per decision.

Entry :math:`i` holds its index, the round, the device's pseudonym, the SHA-256 digest of the
observation, the action, the cap check, the policy's hash, ``previous_hash`` :math:`= h_{i-1}`
(64 zeros for the first) and its own hash

.. math::

    h_i = \mathrm{SHA256}(\mathrm{canonical}(\text{entry}_i \setminus \{\text{hash}\}))

where *canonical* is JSON with sorted keys and no spaces. Editing, removing, inserting or
reordering entries breaks the chain at the first line touched, which :func:`verify_audit_log`
names. Two things the file alone cannot show: lines cut off its end, and a forger who
rewrites the whole chain from some line on; both change the last hash, which the run keeps
apart from the file (``summary.json``'s ``controller.audit_last_hash``), so verifying against
it (``expected_last_hash``, ``fedmosaic audit verify RUN``) detects them too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64
"""``previous_hash`` of the first entry."""
ENTRY_KEYS = ("index", "round", "device", "observation_digest", "action", "cap_check",
              "policy_hash", "previous_hash", "hash")
"""The keys of an entry, in the order they are written."""


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash is taken over: sorted-key, space-free ASCII JSON."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 hex of the entry without its ``hash`` key."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def observation_digest(observation: Sequence[float]) -> str:
    """SHA-256 hex of the observation as a compact JSON list of floats."""
    encoded = json.dumps([float(x) for x in observation], separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class AuditVerdict:
    """What :func:`verify_audit_log` found.

    Attributes:
        ok: Whether the whole chain verifies.
        entries: Entries read (up to the first bad line).
        first_bad_line: 1-based line number of the first bad line, ``None`` if ok.
        reason: What was expected there and what came.
        last_hash: The hash of the last good entry.
    """

    ok: bool
    entries: int
    first_bad_line: int | None
    reason: str
    last_hash: str


def verify_audit_log(path: Path, expected_last_hash: str | None = None) -> AuditVerdict:
    """Check the chain of ``path`` line by line (module docstring).

    Args:
        path: The JSONL audit log.
        expected_last_hash: The last hash kept apart from the file; if given and different,
            entries were cut off the end or the file belongs to another run.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    previous = GENESIS_HASH
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        index = number - 1

        def bad(reason: str, number: int = number, index: int = index,
                previous: str = previous) -> AuditVerdict:
            return AuditVerdict(False, index, number, f"line {number}: {reason}", previous)

        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            return bad(f"expected a JSON object, got {line[:40]!r} ({error.msg})")
        if not isinstance(entry, dict) or set(entry) != set(ENTRY_KEYS):
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            return bad(f"expected the keys {list(ENTRY_KEYS)}, got {got}")
        if entry["index"] != index:
            return bad(f"index is {entry['index']!r} but the line is entry {index} (an entry "
                       f"was removed, inserted or moved)")
        if entry["previous_hash"] != previous:
            before = f"line {number - 1}'s hash is" if number > 1 else "the first entry needs"
            return bad(f"previous_hash is {str(entry['previous_hash'])[:12]}… but {before} "
                       f"{previous[:12]}…")
        recomputed = entry_hash(entry)
        if entry["hash"] != recomputed:
            return bad(f"hash is {str(entry['hash'])[:12]}… but the entry hashes to "
                       f"{recomputed[:12]}… (the entry was edited)")
        previous = entry["hash"]
    if expected_last_hash is not None and expected_last_hash != previous:
        return AuditVerdict(False, len(lines), len(lines) + 1,
                            f"line {len(lines) + 1}: the run recorded the last hash "
                            f"{expected_last_hash[:12]}…, the file ends at {previous[:12]}… "
                            f"(entries were removed from the end, or the file is another "
                            f"run's)", previous)
    return AuditVerdict(True, len(lines), None, "", previous)


class AuditLog:
    """Append-only writer of the chain (module docstring).

    Args:
        path: The JSONL file; created with its folders. An existing file (a resumed run) is
            verified and continued.
        policy_hash: The hash of the policy that decides (its file's, or its parameters').

    Raises:
        ValueError: If an existing file does not verify.
    """

    def __init__(self, path: Path, policy_hash: str) -> None:
        self.path, self.policy_hash = Path(path), policy_hash
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries, self._last_hash = 0, GENESIS_HASH
        if self.path.exists():
            verdict = verify_audit_log(self.path)
            if not verdict.ok:
                raise ValueError(f"audit log {self.path} does not verify, not continuing it: "
                                 f"{verdict.reason}")
            self._entries, self._last_hash = verdict.entries, verdict.last_hash

    @property
    def entries(self) -> int:
        """Entries in the file (the next entry's index)."""
        return self._entries

    @property
    def last_hash(self) -> str:
        """Hash of the last entry; 64 zeros while the log is empty."""
        return self._last_hash

    def append(self, server_round: int, device: str, observation: Sequence[float],
               action: Mapping[str, float], cap_check: Mapping[str, Any]) -> str:
        """Write one decision (flushed and synced); return its hash."""
        entry: dict[str, Any] = {
            "index": self._entries, "round": int(server_round), "device": str(device),
            "observation_digest": observation_digest(observation),
            "action": {k: float(v) for k, v in action.items()}, "cap_check": dict(cap_check),
            "policy_hash": self.policy_hash, "previous_hash": self._last_hash}
        entry["hash"] = entry_hash(entry)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._entries, self._last_hash = self._entries + 1, entry["hash"]
        return entry["hash"]
