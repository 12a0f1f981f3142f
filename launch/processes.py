"""Child processes that always go away: each in its own session, all stopped together.

``ProcessGroup`` starts every command in a new session (``start_new_session=True``) so a
process and everything it spawns (Ray's raylet and workers, Flower's ``flwr-serverapp`` and
``flwr-clientapp`` subprocesses) share one process group. Leaving the ``with`` block, for
any reason including Ctrl-C, sends SIGTERM to every group, waits, then SIGKILLs survivors.

Some descendants open sessions of their own, out of reach of the group signal; every child
therefore inherits a marker variable ``FEDMOSAIC_PROCESS_GROUP=<token>`` in its environment,
and on Linux ``stop`` finally kills any process that still carries the token.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


class ProcessGroup:
    """A set of child processes stopped as one on exit."""

    MARKER = "FEDMOSAIC_PROCESS_GROUP"

    def __init__(self, env: dict[str, str] | None = None, grace_seconds: float = 10.0) -> None:
        self.token = uuid.uuid4().hex
        self.env = {**os.environ, **(env or {}), self.MARKER: self.token}
        self.grace_seconds = grace_seconds
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_files: dict[int, Path] = {}
        self._logs: list[object] = []

    def start(self, command: Sequence[str], log_file: Path) -> subprocess.Popen[bytes]:
        """Start ``command`` with stdout and stderr appended to ``log_file``."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handle = log_file.open("ab")
        self._logs.append(handle)
        process = subprocess.Popen(
            list(command), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True,
        )
        self.processes.append(process)
        self.log_files[process.pid] = log_file
        return process

    def describe_exit(self, process: subprocess.Popen[bytes], tail_lines: int = 20) -> str:
        """Which process ended, how, and the end of its own log."""
        code = process.returncode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               and -code in signal.valid_signals() else f"exited with code {code}")
        log_file = self.log_files.get(process.pid)
        tail = ("\n".join(log_file.read_text(errors="replace").splitlines()[-tail_lines:])
                if log_file is not None and log_file.exists() else "(no log)")
        command = process.args[0] if isinstance(process.args, list) else process.args
        return f"{command} (log {log_file}) {how}; its log ends:\n{tail}"

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM every process group, wait up to ``grace_seconds``, then SIGKILL."""
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        for _ in range(50):
            stragglers = processes_with_env(self.MARKER, self.token)
            if not stragglers:
                break
            for pid in stragglers:
                _kill(pid)
            time.sleep(0.1)
        for handle in self._logs:
            handle.close()  # type: ignore[attr-defined]
        self.processes.clear()
        self._logs.clear()


def processes_with_env(key: str, value: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment holds ``key=value`` (Linux)."""
    needle = f"{key}={value}".encode()
    found = []
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return found
    for proc in proc_root.iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in environ and state != "Z":
            found.append(int(proc.name))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
