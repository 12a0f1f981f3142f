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



def test_an_ended_process_is_described_by_its_command_its_end_and_its_own_log(tmp_path):
    with ProcessGroup() as group:
        failed = group.start(["sh", "-c", "echo loading data; echo disk full >&2; exit 3"],
                             tmp_path / "device-1.log")
        killed = group.start(["sleep", "30"], tmp_path / "device-2.log")
        failed.wait()
        killed.kill()
        killed.wait()

        failed_text, killed_text = group.describe_exit(failed), group.describe_exit(killed)

    assert failed_text.startswith(f"sh (log {tmp_path / 'device-1.log'}) exited with code 3")
    assert failed_text.endswith("loading data\ndisk full")
    assert "sleep (log" in killed_text and "was killed by SIGKILL" in killed_text
