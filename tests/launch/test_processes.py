import os
import signal
import time

import pytest

from fedmosaic.launch.processes import ProcessGroup


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split()[2] != "Z"


def test_stop_ends_the_process_and_its_grandchildren(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    group = ProcessGroup(grace_seconds=2.0)
    parent = group.start(["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"],
                         tmp_path / "log.txt")
    while not pid_file.exists() or not pid_file.read_text().strip():
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())

    group.stop()

    assert parent.returncode is not None
    assert not alive(grandchild)


def test_processes_that_ignore_sigterm_are_killed(tmp_path):
    with ProcessGroup(grace_seconds=0.5) as group:
        stubborn = group.start(["python3", "-c",
                                "import signal, time; signal.signal(signal.SIGTERM, "
                                "signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"],
                               tmp_path / "log.txt")
        while b"ready" not in (tmp_path / "log.txt").read_bytes():
            time.sleep(0.05)

    assert stubborn.returncode == -signal.SIGKILL


def test_exception_inside_the_block_still_stops_everything(tmp_path):
    with pytest.raises(KeyboardInterrupt), ProcessGroup(grace_seconds=1.0) as group:
        sleeper = group.start(["sleep", "300"], tmp_path / "log.txt")
        raise KeyboardInterrupt

    assert sleeper.returncode is not None


def test_descendants_in_their_own_session_are_found_by_marker_and_killed(tmp_path):
    pid_file = tmp_path / "detached.pid"
    group = ProcessGroup(grace_seconds=0.5)
    group.start(["python3", "-c",
                 "import subprocess; p = subprocess.Popen(['sleep', '300'], "
                 f"start_new_session=True); open('{pid_file}', 'w').write(str(p.pid))"],
                tmp_path / "log.txt")
    while not pid_file.exists() or not pid_file.read_text().strip():
        time.sleep(0.05)
    detached = int(pid_file.read_text())
    assert alive(detached)

    group.stop()

    assert not alive(detached)

