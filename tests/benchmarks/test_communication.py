"""The communication benchmark runs in quick mode and its figures follow from its sweep."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bytes_to_reach_sums_each_hop_up_to_the_first_round_at_target(communication):
    run = {"accuracy_per_round": [0.2, 0.5, 0.4, 0.6],
           "bytes_device_to_edge_per_round": [10, 20, 30, 40],
           "bytes_edge_to_cloud_per_round": [1, 2, 3, 4]}

    assert communication.bytes_to_reach(run, 0.5) == {"rounds": 2, "device_to_edge": 30,
                                                      "edge_to_cloud": 3}
    assert communication.bytes_to_reach(run, 0.7) == {"rounds": None, "device_to_edge": None,
                                                      "edge_to_cloud": None}


def test_the_full_sweep_is_top_k_times_bits_and_the_extras(communication):
    hop = communication.HopSetting
    settings = communication.sweep_settings(quick=False)

    grid = {hop(t, b, t, b) for t in (1.0, 0.1, 0.01) for b in (32, 8, 4)}
    extras = {hop(0.5, 4, 0.5, 4), hop(0.3, 4, 0.3, 4), hop(0.3, 4, 0.1, 8),
              hop(0.3, 4, 0.1, 4), hop(0.5, 4, 0.1, 8)}
    assert len(settings) == 14
    assert set(settings) == grid | extras


def test_a_setting_names_both_hops_or_each_hop(communication):
    hop = communication.HopSetting

    assert communication.setting("0.1:8") == hop(0.1, 8, 0.1, 8)
    assert communication.setting("0.3:4/0.1:8") == hop(0.3, 4, 0.1, 8)
    assert hop(0.1, 8, 0.1, 8).label == "topk0.1-bits8"
    assert hop(0.3, 4, 0.1, 8).label == "device-topk0.3-bits4_edge-topk0.1-bits8"
    assert hop(0.3, 4, 0.1, 8).overrides() == {"device-topk": 0.3, "device-bits": 4,
                                               "edge-topk": 0.1, "edge-bits": 8}
    for malformed in ("0.1", "a:8", "0.1:8/", "0.1:8/0.2"):
        with pytest.raises(argparse.ArgumentTypeError, match="TOPK:BITS/TOPK:BITS"):
            communication.setting(malformed)


def test_quick_mode_sweeps_both_datasets_and_derives_the_figures(tmp_path):
    out = tmp_path / "communication.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "communication.py"), "--quick",
         "--out", str(out), "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True
    figures, sweep = result["figures"], result["sweep"]
    assert set(sweep) == {"smartwatch", "synthetic"}
    for name, details in sweep.items():
        flat = details["flat"]
        lossless, compressed = details["settings"]
        assert (lossless["setting"], compressed["setting"]) == ("topk1-bits32", "topk0.01-bits4")
        assert (compressed["device_topk"], compressed["edge_bits"]) == (0.01, 4)
        # (that the lossless hierarchy computes flat FedAvg's weights is tested on the weights,
        # tests/server/edge/test_hierarchy.py; final accuracies can differ by float rounding)
        # one aggregate per edge reaches the cloud, and compression shrinks both hops
        assert lossless["mean_bytes_edge_to_cloud"] < flat["mean_bytes_edge_to_cloud"]
        assert compressed["mean_bytes_device_to_edge"] < lossless["mean_bytes_device_to_edge"]
        assert compressed["mean_bytes_edge_to_cloud"] < lossless["mean_bytes_edge_to_cloud"]
        for row in (lossless, compressed):
            assert row["rejected_updates"] == 0
            assert row["device_to_edge_reduction"] == pytest.approx(
                flat["mean_bytes_device_to_edge"] / row["mean_bytes_device_to_edge"])
        best = details["best"]
        if best is not None:
            assert figures[f"{name}_edge_to_cloud_reduction"] == best["edge_to_cloud_reduction"]
            assert best["accuracy_delta_points"] <= 1.0
    for figure in ("edge_to_cloud_reduction", "device_to_edge_reduction",
                   "accuracy_delta_points", "encode_mb_per_s", "decode_mb_per_s",
                   "encode_vs_copy_ratio"):
        assert figure in figures


def test_codec_figures_follow_from_the_measured_timings_and_payloads(communication):
    codec = communication.codec_speed(argparse.Namespace(quick=True, seed=0))

    figures, speed, compression = codec["figures"], codec["speed"], codec["compression"]
    assert [(r["topk"], r["bits"]) for r in speed] == list(communication.CODEC_SETTINGS)
    slowest = min(speed, key=lambda r: r["encode_mb_per_s"])
    assert figures["encode_mb_per_s"] == slowest["encode_mb_per_s"]
    assert figures["encode_vs_copy_ratio"] == pytest.approx(
        slowest["encode_seconds"] / slowest["copy_seconds"])
    assert figures["decode_mb_per_s"] == min(r["decode_mb_per_s"] for r in speed)
    megabytes = 4 * codec["baseline"]["array_entries"] / 1e6
    for row in speed:
        assert row["encode_mb_per_s"] == pytest.approx(megabytes / row["encode_seconds"])
    # the real update: the lossless payload is float32 plus headers, and exact
    by_setting = {(r["topk"], r["bits"]): r for r in compression}
    lossless = by_setting[(1.0, 32)]
    assert lossless["relative_l2_error"] == 0.0
    assert lossless["float32_bytes"] <= lossless["payload_bytes"] < 1.05 * lossless[
        "float32_bytes"]
    assert lossless["float32_bytes"] == 4 * codec["delta"]["float_parameters"]
    smallest = by_setting[(0.01, 4)]
    assert smallest["payload_bytes"] < by_setting[(0.1, 4)]["payload_bytes"] < by_setting[
        (1.0, 4)]["payload_bytes"]
    assert figures["compression_ratio_topk0.01_bits4"] == pytest.approx(
        smallest["float32_bytes"] / smallest["payload_bytes"])
    assert 0.0 < smallest["relative_l2_error"] < 1.0
