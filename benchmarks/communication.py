"""Communication of the edge tier: bytes on each hop and accuracy over a compression sweep.

Claim (edge tier):
    Devices below edge aggregators, with top-k sparsification and 8/4-bit quantization on both
    hops (error feedback on devices and edges), reach flat FedAvg's accuracy within 1 point
    while sending at least 10x fewer bytes per round device→edge and the cloud receiving at
    least 50x fewer bytes per round than flat FedAvg with float32 updates.

Method (edge tier):
    Every run is fedmosaic's real ServerApp and ClientApp in this process
    (``fedmosaic.simulation.inprocess.run_in_process``, no Ray), federated evaluation off,
    one seed. Per dataset: flat FedAvg with float32 weights (``num-edges=0``), then the edge
    tier at every top-k ratio in {1, 0.1, 0.01} x bits in {32, 8, 4}, the same setting on
    both hops, plus the dense top-k settings 0.5 and 0.3 at 4 bits on both hops
    (:data:`EXTRA_SETTINGS`) and three with a sparser edge hop than device hop
    (:data:`PER_HOP_SETTINGS`): smartwatch (10 subjects, 2 edges, all devices every round,
    1 local epoch, 12 rounds) and synthetic (50 devices, 5 edges, 25 sampled per round,
    2 local epochs, learning rate 0.01, Dirichlet alpha 10, all modalities present,
    15 rounds). Bytes are
    the serialized messages (``bytes_device_to_edge``, ``bytes_edge_to_cloud`` of the run's
    history; a flat run's training replies count for both hops: what devices send and what
    the cloud receives).

Baseline (edge tier):
    Flat FedAvg with float32 updates, same data, model, seed and rounds, in the same run.

Figures (edge tier), per dataset (``smartwatch_...``, ``synthetic_...``) at its best setting
(fewest bytes per round on both hops among settings whose final accuracy is at most 1 point
below flat FedAvg's), and unprefixed as the weaker of the two datasets:
    ``edge_to_cloud_reduction`` = flat bytes received by the cloud per round / ours;
    ``device_to_edge_reduction`` = flat bytes sent by devices per round / ours;
    ``accuracy_delta_points`` = flat final accuracy − ours, in points.
    Targets: >= 50, >= 10, <= 1. The sweep table (bytes per round on each hop, total bytes to
    reach flat FedAvg's final accuracy minus 1 point, final accuracy) is under ``sweep``.
    ``--quick`` runs 2 settings for 2 (smartwatch) and 1 (synthetic) rounds: it checks that
    everything runs; its figures are not meaningful.

Claim (codec):
    The codec (``fedmosaic.compression``: top-k, stochastic quantization, wire
    encoding, error-feedback residual) encodes and decodes updates at a speed within a small
    factor of copying them, and shrinks a real update by the ratio the sweep relies on.

Method and baseline (codec):
    ``compress`` (with the residual) and ``decode`` of one float32 array of 2**22 entries
    (2**19 with ``--quick``) at every setting of the sweep, against ``np.copy`` of the same
    array, the three alternated in each of 15 repeats (5 quick), medians.
    ``encode_mb_per_s``, ``decode_mb_per_s`` (float32 input MB per second, 1 MB = 10**6
    bytes) and ``encode_vs_copy_ratio`` / ``decode_vs_copy_ratio`` (codec time / copy time)
    are those of the slowest setting (``codec_speed_setting``); every setting is under
    ``codec.speed``. ``compression_ratio_topk<r>_bits<b>``: float32 bytes / payload bytes of
    a real update (the model's delta after one local epoch on smartwatch subject 0), with the
    relative L2 error of each setting under ``codec.compression``.

Run: ``python benchmarks/communication.py [--quick] [--datasets D ...] [--settings S ...]
[--part all|codec|sweep] [--local-epochs E] [--seed S] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from fedmosaic.compression import CompressionSpec, compress, decode
from fedmosaic.config import RunConfig
from fedmosaic.models.training import make_loader, train
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import build_model, cached_dataset, loss_weights

NAME = "communication"

# --- edge tier: accuracy and bytes per hop over the compression sweep ---------------------

SWEEP_TOPK = (1.0, 0.1, 0.01)
EXTRA_SETTINGS = ((0.5, 4), (0.3, 4))
"""Dense top-k at 4 bits: with index bitmaps about 3 and 2.2 bits per parameter, i.e. past
10x on the device hop while keeping far more of each update than top-k 0.1."""
SWEEP_BITS = (32, 8, 4)
WITHIN_POINTS = 1.0
TARGET_EDGE_TO_CLOUD = 50.0
TARGET_DEVICE_TO_EDGE = 10.0
SWEEP_DATASETS: dict[str, dict[str, Any]] = {
    # the 10 smartwatch subjects under 2 edges; every device trains every round
    "smartwatch": {"dataset": "smartwatch", "num-clients": 10, "num-edges": 2,
                   "local-epochs": 1},
    # 50 synthetic devices under 5 edges, half of them (about 5 per edge) sampled per round;
    # weak label skew and every modality present, the setting in which this model learns
    # within the round budget
    "synthetic": {"dataset": "synthetic", "num-clients": 50, "num-edges": 5,
                  "fraction-train": 0.5, "local-epochs": 2, "learning-rate": 0.01,
                  "dirichlet-alpha": 10.0, "missing-modality-prob": 0.0},
}
SWEEP_FIGURES = {"edge_to_cloud_reduction": min, "device_to_edge_reduction": min,
                 "accuracy_delta_points": max}
"""Figures of the sweep; unprefixed, each is the weaker of the two datasets' values."""
SWEEP_ROUNDS = {"smartwatch": 12, "synthetic": 15}
QUICK_ROUNDS = {"smartwatch": 2, "synthetic": 1}
QUICK_SETTINGS = ((1.0, 32), (0.01, 4))


@dataclass(frozen=True)
class HopSetting:
    """Compression of one sweep run: top-k ratio and bits on each hop.

    ``device_*`` is what devices send their edge, ``edge_*`` what edges send the cloud.
    """

    device_topk: float
    device_bits: int
    edge_topk: float
    edge_bits: int

    @classmethod
    def both(cls, topk: float, bits: int) -> HopSetting:
        """The same top-k ratio and bits on both hops."""
        return cls(topk, bits, topk, bits)

    @property
    def label(self) -> str:
        """``topk0.1-bits8`` for one setting on both hops, else ``device…_edge…``."""
        device = f"topk{self.device_topk:g}-bits{self.device_bits}"
        edge = f"topk{self.edge_topk:g}-bits{self.edge_bits}"
        return device if device == edge else f"device-{device}_edge-{edge}"

    def overrides(self) -> dict[str, Any]:
        """The run-config keys of this setting."""
        return {"device-topk": self.device_topk, "device-bits": self.device_bits,
                "edge-topk": self.edge_topk, "edge-bits": self.edge_bits}


PER_HOP_SETTINGS = (HopSetting(0.3, 4, 0.1, 8), HopSetting(0.3, 4, 0.1, 4),
                    HopSetting(0.5, 4, 0.1, 8))
"""Dense top-k on the device hop, sparser on the edge hop, which carries the cloud's share of
the bytes; the edge's error feedback returns in later rounds what its top-k drops."""


def sweep_settings(quick: bool) -> list[HopSetting]:
    """The sweep's settings: top-k x bits on both hops, the extras; ``--quick``: two corners."""
    if quick:
        return [HopSetting.both(*pair) for pair in QUICK_SETTINGS]
    grid = [HopSetting.both(topk, bits) for topk in SWEEP_TOPK for bits in SWEEP_BITS]
    return grid + [HopSetting.both(*pair) for pair in EXTRA_SETTINGS] + list(PER_HOP_SETTINGS)


def _hop(text: str, whole: str) -> tuple[float, int]:
    """Parse one hop's ``TOPK:BITS``; ``whole`` is the argument, for the error message."""
    topk, _, bits = text.partition(":")
    try:
        return float(topk), int(bits)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected TOPK:BITS (both hops) or TOPK:BITS/TOPK:BITS (device hop/edge hop) "
            f"such as 0.1:8 or 0.3:4/0.1:8, got {whole!r}") from error


def setting(text: str) -> HopSetting:
    """Parse ``TOPK:BITS`` (both hops, e.g. ``0.1:8``) or ``TOPK:BITS/TOPK:BITS`` (per hop)."""
    device, slash, edge = text.partition("/")
    device_hop = _hop(device, text)
    return HopSetting(*device_hop, *(_hop(edge, text) if slash else device_hop))


def run_once(overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One in-process run; its accuracy and the bytes on each hop, per round.

    A flat run has one hop: its training replies are what devices send and also what the
    cloud receives, so both hop columns hold them (federated evaluation is off in every run,
    so ``bytes_up`` is training replies only).
    """
    started = time.perf_counter()
    config = run_in_process({**overrides, "fraction-evaluate": 0.0,
                             "out-dir": str(run_dir.parent), "run-name": run_dir.name})
    history = json.loads((config.run_dir() / "summary.json").read_text())["history"]
    flat = config.num_edges == 0
    to_edge = [r["bytes_up"] if flat else r["bytes_device_to_edge"] for r in history]
    to_cloud = [r["bytes_up"] if flat else r["bytes_edge_to_cloud"] for r in history]
    return {
        "final_accuracy": history[-1]["accuracy"],
        "accuracy_per_round": [r["accuracy"] for r in history],
        "bytes_device_to_edge_per_round": to_edge,
        "bytes_edge_to_cloud_per_round": to_cloud,
        "mean_bytes_device_to_edge": statistics.fmean(to_edge),
        "mean_bytes_edge_to_cloud": statistics.fmean(to_cloud),
        "rejected_updates": sum(r.get("edge_rejected_updates") or 0 for r in history),
        "wall_seconds": time.perf_counter() - started,
        "run_dir": str(config.run_dir()),
    }


def bytes_to_reach(run: dict[str, Any], target_accuracy: float) -> dict[str, int | None]:
    """Bytes on each hop summed up to the first round whose accuracy reaches the target."""
    for index, accuracy in enumerate(run["accuracy_per_round"]):
        if accuracy >= target_accuracy:
            return {"rounds": index + 1,
                    "device_to_edge": sum(run["bytes_device_to_edge_per_round"][: index + 1]),
                    "edge_to_cloud": sum(run["bytes_edge_to_cloud_per_round"][: index + 1])}
    return {"rounds": None, "device_to_edge": None, "edge_to_cloud": None}


def sweep_dataset(name: str, base: dict[str, Any], settings: list[HopSetting],
                  runs_dir: Path) -> dict[str, Any]:
    """Flat FedAvg with float32 updates, then the edge tier at every setting, on one dataset.

    Reductions are the flat run's bytes per round divided by the setting's: on the
    device→edge hop, what devices send; on the edge→cloud hop, what the cloud receives. The
    best setting is the one with the fewest bytes per round (both hops) whose final accuracy
    is at most ``WITHIN_POINTS`` below flat FedAvg's.
    """
    print(f"{name}: flat FedAvg, float32 ...", flush=True)
    flat = run_once({**base, "num-edges": 0}, runs_dir / f"{name}-flat")
    target = flat["final_accuracy"] - WITHIN_POINTS / 100.0
    flat["bytes_to_target"] = bytes_to_reach(flat, target)
    rows = []
    for hops in settings:
        print(f"{name}: {base['num-edges']} edges, {hops.label} ...", flush=True)
        run = run_once({**base, **hops.overrides()}, runs_dir / f"{name}-{hops.label}")
        rows.append({
            "setting": hops.label, **asdict(hops), **run,
            "accuracy_delta_points": 100.0 * (flat["final_accuracy"] - run["final_accuracy"]),
            "device_to_edge_reduction": common.ratio(flat["mean_bytes_device_to_edge"],
                                                     run["mean_bytes_device_to_edge"]),
            "edge_to_cloud_reduction": common.ratio(flat["mean_bytes_edge_to_cloud"],
                                                    run["mean_bytes_edge_to_cloud"]),
            "bytes_to_target": bytes_to_reach(run, target),
        })
    within = [r for r in rows if r["accuracy_delta_points"] <= WITHIN_POINTS]
    best = min(within, default=None, key=lambda r: r["mean_bytes_device_to_edge"]
               + r["mean_bytes_edge_to_cloud"])
    return {"flat": flat, "target_accuracy": target, "settings": rows, "best": best}


def hierarchy_sweep(args: argparse.Namespace, runs_dir: Path) -> tuple[dict[str, Any],
                                                                       dict[str, Any]]:
    """The accuracy/bytes sweep on both datasets: (figures, per-dataset details)."""
    settings = args.settings or sweep_settings(args.quick)
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for name in args.datasets:
        base = SWEEP_DATASETS[name]
        rounds = (QUICK_ROUNDS if args.quick else SWEEP_ROUNDS)[name]
        result = sweep_dataset(name, {**base, **common.run_overrides(args),
                                      "num-server-rounds": rounds}, settings, runs_dir)
        details[name] = {"rounds": rounds, **result}
        best = result["best"]
        figures[f"{name}_flat_accuracy"] = result["flat"]["final_accuracy"]
        figures[f"{name}_best_setting"] = None if best is None else best["setting"]
        for figure in SWEEP_FIGURES:
            figures[f"{name}_{figure}"] = None if best is None else best[figure]
    for figure, weaker in SWEEP_FIGURES.items():
        values = [figures[f"{name}_{figure}"] for name in args.datasets]
        figures[figure] = None if None in values else weaker(values)
    figures["target_edge_to_cloud_reduction"] = TARGET_EDGE_TO_CLOUD
    figures["target_device_to_edge_reduction"] = TARGET_DEVICE_TO_EDGE
    figures["target_accuracy_delta_points"] = WITHIN_POINTS
    return figures, details


# --- codec: encode/decode speed against a NumPy copy, and compression of a real update -----

CODEC_SETTINGS = tuple((topk, bits) for topk in SWEEP_TOPK for bits in SWEEP_BITS)
CODEC_ENTRIES = {"quick": 1 << 19, "full": 1 << 22}
CODEC_REPEATS = {"quick": 5, "full": 15}
MEGABYTE = 1e6


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    """``(seconds, result)`` of one call ``function(*args)``."""
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def codec_timings(array: np.ndarray, spec: CompressionSpec, repeats: int,
                  seed: int) -> dict[str, Any]:
    """Median seconds of ``compress``, ``decode`` and ``np.copy`` of ``array``, alternated.

    Each repeat times the copy, the encoding and the decoding of the same float32 array; the
    copy goes first in even repeats and last in odd ones, so drifts in machine load hit all
    three alike. Throughput is the float32 input's megabytes (10**6 bytes) per second.
    """
    rng = np.random.default_rng(seed)
    update = {"update": array}
    copies: list[float] = []
    encodes: list[float] = []
    decodes: list[float] = []
    payload = b""
    for repeat in range(repeats):
        if repeat % 2 == 0:
            copies.append(timed(np.copy, array)[0])
        seconds, (payload, _) = timed(compress, update, spec, None, rng)
        encodes.append(seconds)
        decodes.append(timed(decode, payload)[0])
        if repeat % 2 == 1:
            copies.append(timed(np.copy, array)[0])
    megabytes = array.nbytes / MEGABYTE
    copy, encode, decode_s = (common.median(x) for x in (copies, encodes, decodes))
    return {
        "topk": spec.topk_ratio, "bits": spec.bits, "payload_bytes": len(payload),
        "copy_seconds": copy, "encode_seconds": encode, "decode_seconds": decode_s,
        "copy_mb_per_s": megabytes / copy, "encode_mb_per_s": megabytes / encode,
        "decode_mb_per_s": megabytes / decode_s,
        "encode_vs_copy_ratio": encode / copy, "decode_vs_copy_ratio": decode_s / copy,
    }


def real_model_delta(seed: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``w − w_0`` of fedmosaic's model after one local epoch on smartwatch subject 0.

    The run's default config (seed from ``--seed``); the same model, loss and optimizer as a
    ClientApp (``fedmosaic.models.training.train``), one torch thread.
    """
    torch.set_num_threads(1)
    config = RunConfig.from_mapping({} if seed is None else {"seed": seed})
    dataset = cached_dataset(config)
    model = build_model(config, dataset)
    initial = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    train_arrays, _ = dataset.partition(0)
    loader = make_loader(train_arrays, dataset.specs, config.batch_size, shuffle=True,
                         seed=config.seed)
    train(model, loader, dataset.specs, epochs=1, learning_rate=config.learning_rate,
          weights=loss_weights(config))
    delta = {k: v.detach().numpy() - initial[k] for k, v in model.state_dict().items()}
    parameters = sum(int(a.size) for a in delta.values() if a.dtype.kind == "f")
    return delta, {"dataset": "smartwatch", "partition": 0, "local_epochs": 1,
                   "float_parameters": parameters, "tensors": len(delta), "seed": config.seed}


def compression_of(delta: dict[str, np.ndarray], spec: CompressionSpec,
                   seed: int) -> dict[str, Any]:
    """Payload bytes of ``delta`` under ``spec``: ratio to float32 and relative L2 error."""
    payload, _ = compress(delta, spec, None, np.random.default_rng(seed))
    decoded = decode(payload)
    floats = [k for k, a in delta.items() if a.dtype.kind == "f"]
    float32_bytes = 4 * sum(delta[k].size for k in floats)
    error = np.sqrt(sum(float(np.sum((decoded[k] - delta[k]) ** 2)) for k in floats))
    norm = np.sqrt(sum(float(np.sum(delta[k] ** 2)) for k in floats))
    return {"topk": spec.topk_ratio, "bits": spec.bits, "payload_bytes": len(payload),
            "float32_bytes": float32_bytes,
            "compression_ratio": common.ratio(float32_bytes, len(payload)),
            "relative_l2_error": common.ratio(error, norm)}


NO_CODEC: dict[str, Any] = {"figures": {}, "baseline": None, "speed": [], "compression": [],
                            "delta": None}
"""What :func:`main` records for the codec with ``--part sweep``."""


def codec_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Codec figures: speed against a NumPy copy, and compression ratios of a real update.

    Speed: a float32 array of 2**19 (quick) or 2**22 entries from N(0, 0.01²), every
    setting of the sweep; the headline ``encode_mb_per_s``, ``decode_mb_per_s`` and
    ``encode_vs_copy_ratio`` (median encode time / median copy time) are those of the slowest
    setting, named in ``codec_speed_setting``. Compression: the payload of a real model delta
    (:func:`real_model_delta`) at every setting; ``compression_ratio_topk0.01_bits4`` is
    float32 bytes / payload bytes there.

    Returns:
        ``{"figures": ..., "baseline": ..., "speed": [...], "compression": [...],
        "delta": ...}``.
    """
    mode = "quick" if args.quick else "full"
    seed = 0 if args.seed is None else args.seed
    array = (np.random.default_rng(seed).normal(size=CODEC_ENTRIES[mode]) * 0.01).astype(
        np.float32)
    speed = []
    for topk, bits in CODEC_SETTINGS:
        print(f"codec speed: topk={topk:g} bits={bits} ...", flush=True)
        speed.append(codec_timings(array, CompressionSpec(topk_ratio=topk, bits=bits),
                                   CODEC_REPEATS[mode], seed))
    slowest_encode = min(speed, key=lambda row: row["encode_mb_per_s"])
    slowest_decode = min(speed, key=lambda row: row["decode_mb_per_s"])
    print("codec compression of a real model delta ...", flush=True)
    delta, delta_info = real_model_delta(args.seed)
    compression = [compression_of(delta, CompressionSpec(topk_ratio=topk, bits=bits), seed)
                   for topk, bits in CODEC_SETTINGS]
    figures = {
        "encode_mb_per_s": slowest_encode["encode_mb_per_s"],
        "decode_mb_per_s": slowest_decode["decode_mb_per_s"],
        "copy_mb_per_s": slowest_encode["copy_mb_per_s"],
        "encode_vs_copy_ratio": slowest_encode["encode_vs_copy_ratio"],
        "decode_vs_copy_ratio": slowest_decode["decode_vs_copy_ratio"],
        "codec_speed_setting": (f"encode topk={slowest_encode['topk']:g} "
                                f"bits={slowest_encode['bits']}; decode "
                                f"topk={slowest_decode['topk']:g} "
                                f"bits={slowest_decode['bits']}"),
    }
    for row in compression:
        figures[f"compression_ratio_topk{row['topk']:g}_bits{row['bits']}"] = (
            row["compression_ratio"])
    return {
        "figures": figures,
        "baseline": {"what": "np.copy of the same float32 array, alternated with encode and "
                             "decode, median of the repeats; compression against the "
                             "delta's float32 bytes",
                     "array_entries": int(array.size), "repeats": CODEC_REPEATS[mode]},
        "speed": speed,
        "compression": compression,
        "delta": delta_info,
    }


def main() -> None:
    """Parse arguments, run the sweep on both datasets, write and print the figures."""
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--datasets", nargs="+", choices=tuple(SWEEP_DATASETS),
                        default=list(SWEEP_DATASETS),
                        help="datasets of the sweep (default: both); unprefixed figures are "
                             "the weaker over those run")
    parser.add_argument("--settings", nargs="+", type=setting, default=None,
                        metavar="TOPK:BITS[/TOPK:BITS]",
                        help="sweep only these settings, e.g. 1:32 0.1:8 0.3:4/0.1:8 (one "
                             "setting for both hops, or device hop/edge hop; default: the "
                             "full grid, or its two corners with --quick)")
    parser.add_argument("--part", choices=("all", "codec", "sweep"), default="all",
                        help="run only the codec measurements or only the sweep "
                             "(default: %(default)s)")
    args = parser.parse_args()
    runs_dir = common.run_folder(NAME, args.runs_dir)
    print(f"{NAME}: run folders in {runs_dir}", flush=True)
    codec = codec_speed(args) if args.part != "sweep" else NO_CODEC
    figures, sweep = hierarchy_sweep(args, runs_dir) if args.part != "codec" else ({}, {})
    figures.update(codec["figures"])
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"what": "flat FedAvg (num-edges=0) with float32 weights, same data, model, "
                          "seed and rounds, in the same run",
                  **{name: details["flat"] for name, details in sweep.items()},
                  "codec": codec["baseline"]},
        config={"datasets": SWEEP_DATASETS,
                "settings": [asdict(s) for s in args.settings or sweep_settings(args.quick)],
                "rounds": {name: details["rounds"] for name, details in sweep.items()},
                "within_points": WITHIN_POINTS, "part": args.part,
                **common.run_overrides(args)},
        sweep=sweep,
        codec={key: codec[key] for key in ("speed", "compression", "delta")},
    )
    common.print_table(NAME, [(name, value) for name, value in figures.items()])
    for name, details in sweep.items():
        print(f"\n{name}: setting, final accuracy, bytes/round device->edge, edge->cloud")
        for row in [{"setting": "flat float32", **details["flat"]}, *details["settings"]]:
            print(f"  {row['setting']}: {row['final_accuracy']:.4f} "
                  f"{row['mean_bytes_device_to_edge']:.0f} {row['mean_bytes_edge_to_cloud']:.0f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
