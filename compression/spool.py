"""The local hand-off between an edge's two Flower roles, through a spool directory.

On an edge machine two Flower processes meet: the cloud run's ClientApp (started by the edge's
SuperNode, which is connected to the cloud SuperLink) and the edge run's ServerApp (on the
edge's own SuperLink, which the edge's devices are connected to). For cloud round ``r`` the
ClientApp writes ``requests/round-r/`` (the global arrays and the cloud's train config); the
edge ServerApp runs one sub-round on its devices and writes ``replies/round-r/`` (the
aggregate's payload and metrics). Each entry is written into a temporary directory and then
renamed into place (``os.rename`` is atomic within a file system), so a reader never sees a
half-written entry. Both sides poll; nothing but the two processes on the edge touches the
directory.

Layout::

    SPOOL/requests/round-0001/arrays.npz     global weights, in the model's order
    SPOOL/requests/round-0001/request.json   {"edge_id": .., "round": .., "config": {..}}
    SPOOL/replies/round-0001/payload.bin     the codec's payload of the edge's delta
    SPOOL/replies/round-0001/reply.json      {"metrics": {..}}  (num-examples included)
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


class SpoolTimeoutError(TimeoutError):
    """The other side of the spool did not write the expected entry in time."""


@dataclass(frozen=True)
class EdgeRequest:
    """What the cloud asks of an edge in one round."""

    edge_id: int
    server_round: int
    arrays: Arrays
    config: dict[str, Any]


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
        """Publish the cloud's request for ``request.server_round``."""
        with self._entry("requests", request.server_round) as folder:
            with (folder / "arrays.npz").open("wb") as handle:
                np.savez(handle, **request.arrays)
            (folder / "request.json").write_text(json.dumps({
                "edge_id": request.edge_id, "round": request.server_round,
                "config": request.config}))

    def take_request(self, server_round: int, timeout: float) -> EdgeRequest:
        """Wait for, read and return the request for ``server_round``."""
        folder = self._wait("requests", server_round, timeout)
        meta = json.loads((folder / "request.json").read_text())
        with np.load(folder / "arrays.npz") as stored:
            arrays = {name: stored[name] for name in stored.files}
        return EdgeRequest(int(meta["edge_id"]), int(meta["round"]), arrays, meta["config"])

    def put_reply(self, server_round: int, reply: EdgeReply) -> None:
        """Publish the edge's reply for ``server_round``."""
        with self._entry("replies", server_round) as folder:
            (folder / "payload.bin").write_bytes(reply.payload)
            (folder / "reply.json").write_text(json.dumps({"metrics": reply.metrics}))

    def take_reply(self, server_round: int, timeout: float) -> EdgeReply:
        """Wait for, read and return the reply for ``server_round``."""
        folder = self._wait("replies", server_round, timeout)
        metrics = json.loads((folder / "reply.json").read_text())["metrics"]
        return EdgeReply((folder / "payload.bin").read_bytes(), metrics)

    def _path(self, kind: str, server_round: int) -> Path:
        return self.root / kind / f"round-{server_round:04d}"

    def _wait(self, kind: str, server_round: int, timeout: float) -> Path:
        path = self._path(kind, server_round)
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
    def _entry(self, kind: str, server_round: int) -> Iterator[Path]:
        """A temporary folder renamed to ``kind/round-NNNN`` when the ``with`` block ends."""
        target = self._path(kind, server_round)
        folder = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        yield folder
        os.rename(folder, target)
