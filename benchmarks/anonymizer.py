"""The GAN anonymizer and risk perception, measured by attacks the anonymizer never saw.

Claims (targets from the anonymizer issue):
    * ``reid_anonymized`` <= ``reid_chance`` + 0.10 with ``activity_loss_points`` <= 5, on
      smartwatch (subject, 10 devices) and synthetic (site);
    * ``risk_anomaly_f1`` >= ``isolation_forest_f1``: the channel score flags the devices the
      simulation makes anomalous at least as well as scikit-learn's IsolationForest on the same
      features.

Method, per dataset (``smartwatch``: 10 devices, one subject each, attribute ``subject``;
``synthetic``: 20 devices, attribute ``site``, 4 sites):

    * **Anonymizer**: trained federatedly by fedmosaic's real ServerApp and ClientApp run
      in-process (``anonymizer-rounds``), in the same run that then trains the shared model
      through the training path (``anonymize-training=true``). No raw sample leaves a device.
    * **Fresh identity attacker** (Malekzadeh et al. 2019, arXiv:1810.11546): a random forest
      the anonymizer never saw, trained on every device's anonymized training samples with
      their true attribute and tested on the devices' anonymized held-out samples. Features:
      the float modalities flattened, token modalities as bag-of-tokens counts.
    * **Utility**: a random forest trained on anonymized training samples, tested on *real*
      held-out samples (activity accuracy); ``activity_loss_points`` = raw minus anonymized,
      in points. The federated model trained through the training path is evaluated on the
      real central test set by the run itself (``federated_accuracy_anonymized``) against the
      same run without the anonymizer, and on the central test set as the anonymizer rewrites
      it (``federated_accuracy_anonymized_on_anonymized_inputs``: such a model serves
      anonymized inputs).
    * **Baselines at the same distortion** (mean squared change of the float modalities at
      the headline knobs): additive Gaussian noise, and a bounded-Laplace release
      (Holohan et al. 2018; values clipped to ``[-B, B]``, ε per value searched so that the
      distortion matches).
    * **The label's floor** (``reid_label_floor``): the re-identification of a Bayes attacker
      that reads only the task label, ``argmax_s P(s | y)`` with ``P``
      counted on the training samples, scored on the held-out ones. Any release
      that keeps the task readable lets this much through, whatever it does to the rest, so a
      ``reid_anonymized`` target below it cannot be met with ``activity_loss_points`` near 0
      (on synthetic each device's skewed label mix points to its site).
    * **The privacy–utility curves**: over λ ∈ {0, 0.25, 0.5, 0.75, 1} without reframing
      (``curve``, the generator alone) and at the headline's reframing (``curve_reframed``),
      and over the reframing strength r at λ = 0 (``reframe_curve``, reframing alone). The
      headline knobs are :data:`BENCHMARK_KNOBS`; ``reid_gan_alone`` / ``activity_gan_alone``
      (λ = 1, no reframing) and ``reid_reframe_alone`` / ``activity_reframe_alone`` (λ = 0)
      show what each part does.
    * **Attacks on the model trained through the training path**: loss-threshold membership
      inference (``privacy/attacks/membership.py``), re-identification from the shared
      model's embeddings (``privacy/attacks/attribute.py``), and Inverting Gradients on a
      device's one-window update (``privacy/attacks/inversion.py``) with the update computed
      on the anonymized window and the reconstruction compared with the *raw* window (PSNR),
      against the same attacks on the run without the anonymizer.
    * **Risk perception** (smartwatch): three runs with 20 % anomalous devices each
      (``attack=scale-10``, ``delay``, ``burst``); every device's channel observation and
      channel score per round come from ``history.jsonl``. On the rounds after the channel
      model's first fit, both detectors flag the top share of observations equal to the true
      anomaly share; F1 of each against the truth. IsolationForest (``random_state=0``) is
      fitted on exactly those observations (it sees the test rounds; the autoencoder does not
      see a round before scoring it). In an in-process run node ``n`` is partition ``n - 1``.

Run: ``python benchmarks/anonymizer.py [--quick] [--datasets smartwatch,synthetic] [--seed S]
[--out FILE]``. Quick mode only checks that everything runs; its figures are not the claims.
Nothing is asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.metrics import f1_score

from fedmosaic.clients.poisoning import malicious_partitions
from fedmosaic.config import RunConfig
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.training import evaluate, make_loader
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.anonymizer.training import anonymize, load_anonymizer
from fedmosaic.privacy.attacks.inversion import invert_sample, reconstruction_quality
from fedmosaic.privacy.attacks.run import attack_run, load_checkpoint
from fedmosaic.privacy.laplace import BoundedLaplace
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import cached_dataset, loss_weights

NAME = "anonymizer"
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
REFRAMES = (0.25, 0.5, 0.75)
"""Reframing strengths of the reframing-alone curve (λ = 0) below the headline's."""
BENCHMARK_KNOBS = AnonymizerKnobs(strength=0.25, reframe=1.0)
"""Knobs of the headline figures: full reframing and a light rewrite (chosen on smartwatch with
a centrally trained generator, seed 0, before this benchmark's federated runs)."""
GAN_ALONE = AnonymizerKnobs(strength=1.0)
"""The strongest rewrite without reframing, for contrast."""
LAPLACE_BOUND = 4.0
"""Domain ``[-B, B]`` of the bounded-Laplace release (standardized data)."""
LAPLACE_EPSILONS = tuple(np.geomspace(0.05, 20.0, 40))
TARGETS = {"reid_margin_points": ("<=", 10.0), "activity_loss_points": ("<=", 5.0)}
RISK_ATTACKS = ("scale-10", "delay", "burst")
DATASETS = {
    "smartwatch": {"dataset": "smartwatch", "num-clients": 10},
    "synthetic": {"dataset": "synthetic", "num-clients": 20, "samples-per-client": 120},
}
FULL = {"anonymizer_rounds": 100, "anonymizer_steps": 5, "rounds": 15, "risk_rounds": 12,
        "forest_trees": 200, "inversion_windows": 3, "inversion_iterations": 300}
QUICK = {"anonymizer_rounds": 2, "anonymizer_steps": 2, "rounds": 1, "risk_rounds": 7,
         "forest_trees": 20, "inversion_windows": 1, "inversion_iterations": 20}


def features(arrays: MultimodalArrays, specs: tuple[ModalitySpec, ...]) -> np.ndarray:
    """Float modalities flattened (NaN padding as 0), token modalities as token counts."""
    parts = []
    for spec in specs:
        values = arrays.inputs[spec.name]
        if spec.kind == ModalityKind.TOKENS:
            counts = np.zeros((len(arrays), spec.vocab_size))
            for row, tokens in enumerate(values):
                np.add.at(counts[row], tokens, 1)
            counts[:, 0] = 0  # the padding token
            parts.append(counts)
        else:
            parts.append(np.nan_to_num(values.reshape(len(arrays), -1)))
    return np.concatenate(parts, axis=1)


def distortion(raw: MultimodalArrays, changed: MultimodalArrays,
               specs: tuple[ModalitySpec, ...]) -> float:
    """Mean squared change over the float modalities' entries."""
    floats = [s for s in specs if s.kind != ModalityKind.TOKENS]
    return float(np.mean(np.concatenate([
        np.nan_to_num(changed.inputs[s.name] - raw.inputs[s.name]).ravel() ** 2
        for s in floats])))


def with_floats(arrays: MultimodalArrays, specs: tuple[ModalitySpec, ...],
                change: Callable[[np.ndarray], np.ndarray]) -> MultimodalArrays:
    """``arrays`` with every float modality replaced by ``change(values)`` where present."""
    inputs = dict(arrays.inputs)
    for j, spec in enumerate(specs):
        if spec.kind == ModalityKind.TOKENS:
            continue
        present = arrays.mask[:, j].reshape(-1, *([1] * len(spec.shape)))
        inputs[spec.name] = np.where(present, change(arrays.inputs[spec.name]), 0.0).astype(
            np.float32)
    return MultimodalArrays(inputs=inputs, mask=arrays.mask, labels=arrays.labels)


class Split:
    """Every device's training and held-out samples with their sensitive attribute."""

    def __init__(self, config: RunConfig) -> None:
        dataset = cached_dataset(config)
        self.specs = dataset.specs
        trains, tests, train_ids, test_ids = [], [], [], []
        for partition in range(config.num_clients):
            train, test = dataset.partition(partition)
            value = dataset.sensitive_value(partition)
            trains.append(train)
            tests.append(test)
            train_ids.append(np.full(len(train), value))
            test_ids.append(np.full(len(test), value))
        self.train = MultimodalArrays.concatenate(trains)
        self.test = MultimodalArrays.concatenate(tests)
        self.train_ids = np.concatenate(train_ids)
        self.test_ids = np.concatenate(test_ids)
        values, counts = np.unique(self.test_ids, return_counts=True)
        self.chance = float(counts.max() / counts.sum())
        self.num_values = dataset.num_sensitive_values
        self.label_floor = label_only_reid(self.train.labels, self.train_ids, self.test.labels,
                                           self.test_ids)


def label_only_reid(train_labels: np.ndarray, train_ids: np.ndarray, test_labels: np.ndarray,
                    test_ids: np.ndarray) -> float:
    """Accuracy of the Bayes attacker that guesses the attribute from the label alone.

    For each label it guesses the attribute value seen most often with that label in training
    (ties: the smallest value); a label never seen in training gets the most frequent value.
    """
    labels = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
    values = int(max(train_ids.max(initial=0), test_ids.max(initial=0))) + 1
    counts = np.zeros((labels, values))
    np.add.at(counts, (train_labels, train_ids), 1)
    counts[counts.sum(1) == 0] = np.bincount(train_ids, minlength=values)
    return float(np.mean(counts.argmax(1)[test_labels] == test_ids))


def forest(trees: int, seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(trees, random_state=seed, n_jobs=2)


def evaluate_release(split: Split, train: MultimodalArrays, test: MultimodalArrays,
                     trees: int, seed: int) -> dict[str, float]:
    """Fresh identity attacker and activity utility of a release of ``train`` / ``test``."""
    specs = split.specs
    attacker = forest(trees, seed).fit(features(train, specs), split.train_ids)
    activity = forest(trees, seed).fit(features(train, specs), train.labels)
    return {
        "reid": float(attacker.score(features(test, specs), split.test_ids)),
        "activity_on_real": float(activity.score(features(split.test, specs), split.test.labels)),
        "activity_on_anonymized": float(activity.score(features(test, specs), test.labels)),
        "distortion": distortion(split.train, train, specs),
    }


def bounded_laplace(arrays: MultimodalArrays, specs, epsilon: float, seed: int
                    ) -> MultimodalArrays:
    mechanism = BoundedLaplace(epsilon=epsilon, lower=-LAPLACE_BOUND, upper=LAPLACE_BOUND)
    rng = np.random.default_rng(seed)
    return with_floats(arrays, specs, lambda v: mechanism.release(
        np.clip(np.nan_to_num(v), -LAPLACE_BOUND, LAPLACE_BOUND), rng))


def laplace_at_distortion(split: Split, target: float, seed: int) -> float:
    """The ε whose bounded-Laplace release of the training samples is closest to ``target``."""
    sample = split.train.subset(np.arange(len(split.train)) < min(200, len(split.train)))
    gaps = [abs(distortion(sample, bounded_laplace(sample, split.specs, e, seed), split.specs)
                - target) for e in LAPLACE_EPSILONS]
    return float(LAPLACE_EPSILONS[int(np.argmin(gaps))])


def inversion_psnr(run_dir: Path, settings: dict[str, Any], generator=None,
                   knobs: AnonymizerKnobs | None = None) -> dict[str, float]:
    """PSNR against the *raw* window of Inverting Gradients on one-window updates.

    With ``generator`` the update is computed on the window anonymized at ``knobs`` (the
    training path).
    """
    config, dataset, model, _ = load_checkpoint(run_dir)
    raw, _ = dataset.partition(0)
    seen = raw if generator is None else anonymize(generator, raw, knobs, seed=0)
    psnrs = []
    for index in range(settings["inversion_windows"]):
        result = invert_sample(model, seen, dataset.specs, index, loss_weights(config),
                               iterations=settings["inversion_iterations"], seed=index)
        truth = {s.name: torch.as_tensor(raw.inputs[s.name][index:index + 1])
                 for s in dataset.specs if s.name in result.reconstruction}
        guess = {name: torch.as_tensor(value)[None] for name, value in
                 result.reconstruction.items()}
        psnrs.append(reconstruction_quality(truth, guess)[1])
    return {"mean_psnr_db": float(np.mean(psnrs)), "psnr_db": psnrs}


def accuracy_on_anonymized(run_dir: Path, generator, seed: int) -> float:
    """The run's final model on its central test set as the anonymizer rewrites it.

    A model trained through the training path serves anonymized inputs.
    """
    _, dataset, model, _ = load_checkpoint(run_dir)
    test = anonymize(generator, dataset.central_test(), BENCHMARK_KNOBS, seed=seed)
    with torch.no_grad():
        return evaluate(model, make_loader(test, dataset.specs, 256, shuffle=False, seed=0),
                        dataset.specs).accuracy


def run(base: dict[str, Any], runs_dir: Path, name: str, **overrides: Any) -> dict[str, Any]:
    started = time.perf_counter()
    config = run_in_process({**base, **overrides, "out-dir": str(runs_dir), "run-name": name})
    summary = json.loads((config.run_dir() / "summary.json").read_text())
    return {"run_dir": str(config.run_dir()), "accuracy": summary["final_accuracy"],
            "anonymizer": summary.get("anonymizer"),
            "wall_seconds": time.perf_counter() - started}


def measure_dataset(name: str, base: dict[str, Any], runs_dir: Path,
                    settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Everything above for one dataset."""
    print(f"[{name}] federated anonymizer + training path ...", flush=True)
    anonymized = run(base, runs_dir, f"{name}-anonymized",
                     **{"anonymizer-rounds": settings["anonymizer_rounds"],
                        "anonymizer-steps": settings["anonymizer_steps"],
                        "anonymize-training": True,
                        "anonymizer-strength": BENCHMARK_KNOBS.strength,
                        "anonymizer-reframe": BENCHMARK_KNOBS.reframe})
    print(f"[{name}] the same run without the anonymizer ...", flush=True)
    plain = run(base, runs_dir, f"{name}-plain")
    config = RunConfig.from_mapping(base)
    split = Split(config)
    generator = load_anonymizer(Path(anonymized["run_dir"]) / "anonymizer.pt", split.specs)
    trees = settings["forest_trees"]
    print(f"[{name}] fresh attackers over the λ and reframing curves ...", flush=True)

    def release(knobs: AnonymizerKnobs) -> dict[str, float]:
        return evaluate_release(split, anonymize(generator, split.train, knobs, seed=seed),
                                anonymize(generator, split.test, knobs, seed=seed + 1),
                                trees, seed)

    strengths = sorted({*STRENGTHS, GAN_ALONE.strength, BENCHMARK_KNOBS.strength})
    curve = {f"{s:g}": release(AnonymizerKnobs(strength=s)) for s in strengths}
    curve_reframed = {f"{s:g}": release(dataclasses.replace(BENCHMARK_KNOBS, strength=s))
                      for s in strengths}
    reframe_curve = {**{f"{r:g}": release(AnonymizerKnobs(strength=0.0, reframe=r))
                        for r in REFRAMES}, f"{BENCHMARK_KNOBS.reframe:g}": curve_reframed["0"]}
    raw = evaluate_release(split, split.train, split.test, trees, seed)
    headline = curve_reframed[f"{BENCHMARK_KNOBS.strength:g}"]
    gan_alone = curve[f"{GAN_ALONE.strength:g}"]
    reframe_alone = reframe_curve[f"{BENCHMARK_KNOBS.reframe:g}"]
    rng = np.random.default_rng(seed)
    sigma = float(np.sqrt(headline["distortion"]))
    noise = evaluate_release(
        split, with_floats(split.train, split.specs, lambda v: v + rng.normal(0, sigma, v.shape)),
        with_floats(split.test, split.specs, lambda v: v + rng.normal(0, sigma, v.shape)),
        trees, seed)
    epsilon = laplace_at_distortion(split, headline["distortion"], seed)
    laplace = evaluate_release(split, bounded_laplace(split.train, split.specs, epsilon, seed),
                               bounded_laplace(split.test, split.specs, epsilon, seed + 1),
                               trees, seed)
    print(f"[{name}] attacks on the model trained through the training path ...", flush=True)
    attacks = {"anonymized": attack_run(Path(anonymized["run_dir"])),
               "plain": attack_run(Path(plain["run_dir"]))}
    inversion = {"anonymized": inversion_psnr(Path(anonymized["run_dir"]), settings,
                                              generator, BENCHMARK_KNOBS),
                 "plain": inversion_psnr(Path(plain["run_dir"]), settings)}
    figures = {
        "reid_raw": raw["reid"],
        "reid_anonymized": headline["reid"],
        "reid_chance": split.chance,
        "reid_label_floor": split.label_floor,
        "reid_margin_points": 100.0 * (headline["reid"] - split.chance),
        "reid_noise_same_distortion": noise["reid"],
        "reid_bounded_laplace_same_distortion": laplace["reid"],
        "activity_raw": raw["activity_on_real"],
        "activity_anonymized": headline["activity_on_real"],
        "activity_loss_points": 100.0 * (raw["activity_on_real"]
                                         - headline["activity_on_real"]),
        "activity_anonymized_on_anonymized": headline["activity_on_anonymized"],
        "activity_noise_same_distortion": noise["activity_on_real"],
        "activity_bounded_laplace_same_distortion": laplace["activity_on_real"],
        "distortion_anonymized": headline["distortion"],
        "reid_gan_alone": gan_alone["reid"],
        "activity_gan_alone": gan_alone["activity_on_real"],
        "reid_reframe_alone": reframe_alone["reid"],
        "activity_reframe_alone": reframe_alone["activity_on_real"],
        "federated_accuracy_anonymized": anonymized["accuracy"],
        "federated_accuracy_anonymized_on_anonymized_inputs": accuracy_on_anonymized(
            Path(anonymized["run_dir"]), generator, seed),
        "federated_accuracy_plain": plain["accuracy"],
        "embedding_reid_anonymized": attacks["anonymized"][
            "reidentification_from_embeddings"]["accuracy"],
        "embedding_reid_plain": attacks["plain"]["reidentification_from_embeddings"][
            "accuracy"],
        "mia_auc_anonymized": attacks["anonymized"]["membership_loss_threshold"]["auc"],
        "mia_auc_plain": attacks["plain"]["membership_loss_threshold"]["auc"],
        "inversion_psnr_vs_raw_anonymized_db": inversion["anonymized"]["mean_psnr_db"],
        "inversion_psnr_vs_raw_plain_db": inversion["plain"]["mean_psnr_db"],
    }
    return {"figures": figures, "curve": curve, "curve_reframed": curve_reframed,
            "reframe_curve": reframe_curve, "raw": raw, "noise": noise,
            "bounded_laplace": {**laplace, "epsilon_per_value": epsilon,
                                "bound": LAPLACE_BOUND},
            "attacks": attacks, "inversion": inversion,
            "runs": {"anonymized": anonymized, "plain": plain}}


def risk_detection(runs_dir: Path, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """F1 of the channel score and of IsolationForest at flagging anomalous devices."""
    base = {**DATASETS["smartwatch"], "num-server-rounds": settings["risk_rounds"],
            "local-epochs": 1, "fraction-evaluate": 0.0, "seed": seed,
            "malicious-fraction": 0.2}
    rows, truth, scores = [], [], []
    per_attack = {}
    for attack in RISK_ATTACKS:
        print(f"[risk] run with attack={attack} ...", flush=True)
        config = run_in_process({**base, "attack": attack, "out-dir": str(runs_dir),
                                 "run-name": f"risk-{attack}"})
        bad = malicious_partitions(config.num_clients, config.malicious_fraction, config.seed)
        history = [json.loads(line) for line in
                   (config.run_dir() / "history.jsonl").read_text().splitlines()]
        start = len(rows)
        for entry in history:
            nodes = entry.get("risk") or {}
            if len({round(n["risk-channel"], 9) for n in nodes.values()}) <= 1:
                continue  # the channel model is not fitted yet: every score is the prior
            for node, observed in nodes.items():
                rows.append([observed[k] for k in ("round-trip-seconds", "reply-bytes",
                                                   "update-norm", "cosine-to-aggregate",
                                                   "rejections")])
                truth.append(int(node) - 1 in bad)
                scores.append(observed["risk-channel"])
        per_attack[attack] = {"observations": len(rows) - start,
                              "anomalous_partitions": sorted(bad)}
    truth_array, score_array = np.array(truth), np.array(scores)
    matrix = np.log1p(np.abs(np.array(rows))) * np.sign(np.array(rows))
    share = float(truth_array.mean()) if len(truth_array) else 0.0
    flagged = max(1, round(share * len(truth_array)))
    forest_scores = -IsolationForest(random_state=0).fit(matrix).score_samples(matrix)

    def top(values: np.ndarray) -> np.ndarray:
        chosen = np.zeros(len(values), bool)
        chosen[np.argsort(-values, kind="stable")[:flagged]] = True
        return chosen

    return {
        "risk_anomaly_f1": float(f1_score(truth_array, top(score_array))),
        "isolation_forest_f1": float(f1_score(truth_array, top(forest_scores))),
        "risk_anomaly_f1_at_0_5": float(f1_score(truth_array, score_array >= 0.5)),
        "observations": len(truth_array), "anomalous_share": share,
        "per_attack": per_attack,
    }


def main() -> None:
    """Parse arguments, measure, write and print the figures."""
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--datasets", default="smartwatch,synthetic",
                        help="comma-separated datasets (default: %(default)s)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    seed = args.seed if args.seed is not None else 0
    runs_dir = common.run_folder(NAME, args.runs_dir)
    results: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        base = {**DATASETS[name], "num-server-rounds": settings["rounds"], "seed": seed,
                "fraction-evaluate": 0.0, **common.run_overrides(args)}
        results[name] = measure_dataset(name, base, runs_dir, settings, seed)
        figures |= {f"{name}_{key}": value for key, value in results[name]["figures"].items()}
    risk = risk_detection(runs_dir, settings, seed)
    figures["risk_anomaly_f1"] = risk["risk_anomaly_f1"]
    figures["isolation_forest_f1"] = risk["isolation_forest_f1"]
    targets = {f"{name}_{key}": f"{op} {bound}" for name in results
               for key, (op, bound) in TARGETS.items()}
    targets["risk_anomaly_f1"] = ">= isolation_forest_f1"
    met = {f"{name}_{key}": (figures[f"{name}_{key}"] <= bound if op == "<="
                             else figures[f"{name}_{key}"] >= bound)
           for name in results for key, (op, bound) in TARGETS.items()}
    met["risk_anomaly_f1"] = risk["risk_anomaly_f1"] >= risk["isolation_forest_f1"]
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"what": "raw data, additive Gaussian noise and a bounded-Laplace release at "
                          "the anonymizer's distortion; the same federated run without the "
                          "anonymizer; IsolationForest on the same channel features"},
        config={"settings": settings, "seed": seed, "strengths": STRENGTHS,
                "reframes": REFRAMES, "benchmark_knobs": BENCHMARK_KNOBS.to_mapping(),
                "gan_alone_knobs": GAN_ALONE.to_mapping(), "datasets": DATASETS},
        targets=targets, targets_met=met, datasets=results, risk=risk)
    common.print_table(NAME, list(figures.items()))
    print(f"targets met: {met}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
