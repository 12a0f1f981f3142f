"""The local hand-off between an edge's two Flower roles, through a spool directory.

On an edge machine two Flower processes meet: the cloud run's ClientApp (started by the edge's
SuperNode, which is connected to the cloud SuperLink) and the edge run's ServerApp (on the
edge's own SuperLink, which the edge's devices are connected to). For each training message
of the cloud the ClientApp writes ``requests/request-n/`` (the global arrays and the cloud's
train config); the edge ServerApp runs one sub-round on its devices and writes
``replies/request-n/`` (the aggregate's payload and metrics). ``n`` is the cloud's round in
synchronous rounds, and the message's number in the run under an asynchronous cloud
(``edge-request``), which may send an edge several in one version or none; the edge serves
them in increasing order, skipping the numbers that went to other edges
(:meth:`EdgeSpool.take_next_request`). Each entry is written into a temporary
directory and then renamed into place (``os.rename`` is atomic within a file system), so a
reader never sees a half-written entry. Both sides poll; nothing but the two processes on the
edge touches the directory.

Layout::

    SPOOL/requests/request-0001/arrays.npz     global weights, in the model's order
    SPOOL/requests/request-0001/request.json   {"edge_id": .., "round": .., "number": ..,
                                                "config": {..}}
    SPOOL/replies/request-0001/payload.bin     the codec's payload of the edge's delta
    SPOOL/replies/request-0001/reply.json      {"metrics": {..}}  (num-examples included)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]
POLL_SECONDS = 0.2
PREFIX = "request-"
"""Name of an entry: ``request-`` and its number, zero-padded to 4 digits."""


class SpoolTimeoutError(TimeoutError):
    """The other side of the spool did not write the expected entry in time."""


@dataclass(frozen=True)
class EdgeRequest:
    """What the cloud asks of an edge in one training message.

    Attributes:
        edge_id: The edge.
        server_round: The cloud's round (asynchronous: the version it will make, plus one).
        arrays: The global weights sent.
        config: The cloud's train config.
        number: The spool's key (module docstring): ``server_round`` unless the cloud numbers
            its messages to the edge.
    """

    edge_id: int
    server_round: int
    arrays: Arrays
    config: dict[str, Any]
    number: int


@dataclass(frozen=True)
class EdgeReply:
    """What an edge hands back: its aggregate's payload and metrics."""

    payload: bytes
    metrics: dict[str, float]


class EdgeSpool:
    """A spool directory shared by an edge's SuperNode-side ClientApp and its ServerApp."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        if not str(root):
            raise ValueError("edge spool directory must be a non-empty path, got ''")
        self.root = Path(root)
        for sub in ("requests", "replies"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def put_request(self, request: EdgeRequest) -> None:
        """Publish the cloud's request under ``request.number``."""
        with self._entry("requests", request.number) as folder:
            with (folder / "arrays.npz").open("wb") as handle:
                np.savez(handle, **request.arrays)
            (folder / "request.json").write_text(json.dumps({
                "edge_id": request.edge_id, "round": request.server_round,
                "number": request.number, "config": request.config}))

    def take_next_request(self, after: int, timeout: float) -> EdgeRequest:
        """Wait for, read and return the lowest-numbered request above ``after``.

        Numbers that never come here (other edges' messages, or one lost on the way) are
        skipped.
        """
        deadline = time.monotonic() + timeout
        while not (numbers := [n for n in self._numbers("requests") if n > after]):
            if time.monotonic() > deadline:
                raise SpoolTimeoutError(
                    f"expected a request after number {after} in {self.root / 'requests'} "
                    f"within {timeout:.0f} s; the cloud sent this edge none")
            time.sleep(POLL_SECONDS)
        return self._read_request(self._path("requests", min(numbers)))

    @staticmethod
    def _read_request(folder: Path) -> EdgeRequest:
        meta = json.loads((folder / "request.json").read_text())
        with np.load(folder / "arrays.npz") as stored:
            arrays = {name: stored[name] for name in stored.files}
        return EdgeRequest(int(meta["edge_id"]), int(meta["round"]), arrays, meta["config"],
                           int(meta["number"]))

    def put_reply(self, number: int, reply: EdgeReply) -> None:
        """Publish the edge's reply to request ``number``."""
        with self._entry("replies", number) as folder:
            (folder / "payload.bin").write_bytes(reply.payload)
            (folder / "reply.json").write_text(json.dumps({"metrics": reply.metrics}))

    def take_reply(self, number: int, timeout: float) -> EdgeReply:
        """Wait for, read and return the reply to request ``number``."""
        folder = self._wait("replies", number, timeout)
        metrics = json.loads((folder / "reply.json").read_text())["metrics"]
        return EdgeReply((folder / "payload.bin").read_bytes(), metrics)

    def _path(self, kind: str, number: int) -> Path:
        return self.root / kind / f"{PREFIX}{number:04d}"

    def _numbers(self, kind: str) -> list[int]:
        """The numbers of ``kind``'s complete entries."""
        return [int(path.name[len(PREFIX):]) for path in (self.root / kind).iterdir()
                if path.name.startswith(PREFIX) and path.name[len(PREFIX):].isdigit()]

    def _wait(self, kind: str, number: int, timeout: float) -> Path:
        path = self._path(kind, number)
        deadline = time.monotonic() + timeout
        while not path.is_dir():
            if time.monotonic() > deadline:
                raise SpoolTimeoutError(
                    f"expected {path} within {timeout:.0f} s; the other side of the edge "
                    "spool did not write it (is the edge's ServerApp run / SuperNode up?)"
                )
            time.sleep(POLL_SECONDS)
        return path

    @contextlib.contextmanager
    def _entry(self, kind: str, number: int) -> Iterator[Path]:
        """A temporary folder renamed to ``kind/request-NNNN`` when the ``with`` block ends."""
        target = self._path(kind, number)
        folder = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        yield folder
        os.rename(folder, target)
