"""A thousand devices on Ray: state on disk for the sampled ones only, in bounded time."""

import json
import subprocess
import sys

from fedmosaic import records
from fedmosaic.clients.state_store import read_state


def test_a_thousand_device_run_keeps_state_only_for_the_devices_it_sampled(tmp_path):
    run_dir = tmp_path / "thousand"
    # 10 of 1,000 devices a round below 2 edges with top-k: each sampled device keeps an
    # error-feedback residual, which waits on disk until it is sampled again
    completed = subprocess.run(
        [sys.executable, "-m", "fedmosaic.cli", "run", "-q", "--out", str(run_dir),
         "-c", "dataset=synthetic", "-c", "num-clients=1000", "-c", "fraction-train=0.01",
         "-c", "fraction-evaluate=0.0", "-c", "num-server-rounds=3", "-c", "local-epochs=1",
         "-c", "samples-per-client=16", "-c", "num-edges=2", "-c", "device-topk=0.3"],
        capture_output=True, text=True, timeout=900, check=False)

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["history"]] == [1, 2, 3]
    assert all(r["bytes_device_to_edge"] > 0 for r in summary["history"])
    files = sorted((run_dir / "device-state").iterdir())
    assert 10 <= len(files) <= 30  # at most the 3 x 10 sampled devices, never the population
    assert all(records.DEVICE_RESIDUAL in read_state(f) for f in files)
    assert summary["partitions"]["total_devices"] == 1000
