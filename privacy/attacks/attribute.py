r"""Attribute inference: re-identifying the subject behind shared embeddings or telemetry.

* **From embeddings.** The global model's probabilistic embeddings (the per-modality means
  :math:`\mu_m`, concatenated) of windows the attacker can attribute (e.g. from an earlier
  leak) train a multinomial logistic regression from embedding to subject; its accuracy on
  other windows is the re-identification rate (chance: one over the number of subjects).
  This is the attribute-inference game of Yeom et al. 2018 with the subject as the attribute,
  and the "property inference from representations" of Melis, Song, De Cristofaro,
  Shmatikov 2019 ("Exploiting Unintended Feature Leakage in Collaborative Learning", IEEE
  S&P) applied to embeddings.
* **From telemetry.** Each device publishes summaries at two times; the attacker links each
  later release to the nearest earlier one (Euclidean distance after standardising each field
  by the earlier releases' spread; Narayanan & Shmatikov 2008, "Robust De-anonymization of
  Large Sparse Datasets", IEEE S&P, is the classic linkage attack). The linkage rate is the
  share of devices matched to themselves (chance: one over the number of devices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedmosaic.data.modality import ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import outputs_by_batch

MAX_ITERATIONS = 2000
"""Iterations of the logistic regression's solver."""


@dataclass(frozen=True)
class ReidentificationResult:
    """How often the attacker names the right subject or device.

    Attributes:
        accuracy: Share of targets attributed to their true subject.
        chance: Accuracy of guessing the most frequent reference subject.
        targets: Number of attacked samples.

    """

    accuracy: float
    chance: float
    targets: int


@torch.no_grad()
def shared_embeddings(model: MultimodalClassifier, arrays: MultimodalArrays,
                      specs: tuple[ModalitySpec, ...]) -> np.ndarray:
    """``(N, M * D)``: every sample's embedding means, modalities concatenated (eval mode)."""
    parts = [output.mus.flatten(start_dim=1)
             for output, _ in outputs_by_batch(model, arrays, specs)]
    return torch.cat(parts).numpy() if parts else np.empty((0, 0))


def reidentify(reference: np.ndarray, reference_subjects: np.ndarray, targets: np.ndarray,
               target_subjects: np.ndarray, seed: int = 0) -> ReidentificationResult:
    """Fit subject ~ features on ``reference`` and score the predictions on ``targets``.

    Raises:
        ValueError: If shapes disagree or the reference holds fewer than two subjects.

    """
    reference, targets = np.asarray(reference, float), np.asarray(targets, float)
    if reference.ndim != 2 or targets.ndim != 2 or reference.shape[1] != targets.shape[1]:
        raise ValueError(f"reference and targets must be (N, F) with the same F, got "
                         f"{reference.shape} and {targets.shape}")
    if len(reference_subjects) != len(reference) or len(target_subjects) != len(targets):
        raise ValueError("need one subject per row: got "
                         f"{len(reference_subjects)} for {len(reference)} reference rows and "
                         f"{len(target_subjects)} for {len(targets)} target rows")
    subjects, counts = np.unique(reference_subjects, return_counts=True)
    if len(subjects) < 2:
        raise ValueError(f"reference must hold >= 2 subjects, got {subjects.tolist()}")
    if len(targets) == 0:
        raise ValueError("targets must hold at least one row, got none")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(
        max_iter=MAX_ITERATIONS, random_state=seed))
    classifier.fit(reference, reference_subjects)
    accuracy = float(np.mean(classifier.predict(targets) == np.asarray(target_subjects)))
    chance = float(np.mean(np.asarray(target_subjects) == subjects[np.argmax(counts)]))
    return ReidentificationResult(accuracy=accuracy, chance=chance, targets=len(targets))


def link_releases(earlier: np.ndarray, later: np.ndarray) -> ReidentificationResult:
    """Link each device's later release (row ``i``) to the nearest earlier release.

    Args:
        earlier: ``(devices, fields)`` releases at the first time, row ``i`` is device ``i``.
        later: ``(devices, fields)`` releases of the same devices at a later time.

    Returns:
        The share of devices linked to themselves; chance is ``1 / devices``.

    Raises:
        ValueError: If the shapes differ or fewer than two devices are given.

    """
    earlier, later = np.asarray(earlier, float), np.asarray(later, float)
    if earlier.shape != later.shape or earlier.ndim != 2 or earlier.shape[0] < 2:
        raise ValueError(f"earlier and later must both be (devices >= 2, fields), got "
                         f"{earlier.shape} and {later.shape}")
    spread = earlier.std(axis=0)
    spread[spread == 0.0] = 1.0
    distances = np.linalg.norm((later[:, None, :] - earlier[None, :, :]) / spread, axis=-1)
    matched = distances.argmin(axis=1) == np.arange(len(later))
    return ReidentificationResult(accuracy=float(matched.mean()), chance=1.0 / len(later),
                                  targets=len(later))
