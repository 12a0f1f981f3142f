"""How much a trained model loses when a modality is missing at prediction time.

A camera switched off or a sensor that fails leaves a device predicting from fewer modalities
than it trained with. For each modality ``m`` the test samples that hold ``m`` and at least
one other modality are classified twice, with every modality they hold and with ``m``
removed (its mask column cleared); the drop is the difference of the two accuracies on the
same samples, so it measures the missing modality and nothing else. FedMultimodal (Feng et al.
2023, KDD) evaluates missing modalities the same way, against zero-filled concatenation
(:mod:`fedmosaic.models.concatenation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedmosaic import records
from fedmosaic.data.modality import ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import outputs_by_batch


@dataclass(frozen=True)
class ModalityRemoval:
    """Accuracy on the samples that can lose one modality, with it and without it.

    Attributes:
        samples: Test samples holding the modality and at least one other.
        accuracy_with: Accuracy with every modality they hold.
        accuracy_without: Accuracy with the modality removed.

    """

    samples: int
    accuracy_with: float
    accuracy_without: float

    @property
    def drop_points(self) -> float:
        """Accuracy lost by removing the modality, in percentage points."""
        return 100.0 * (self.accuracy_with - self.accuracy_without)


@torch.no_grad()
def remove_each_modality(model: MultimodalClassifier, arrays: MultimodalArrays,
                         specs: tuple[ModalitySpec, ...]) -> dict[str, ModalityRemoval]:
    """Per modality name, its :class:`ModalityRemoval` on ``arrays``.

    One pass over ``arrays`` gives every accuracy with all modalities, and one pass per
    modality over the samples that can lose it the accuracy without it. A modality no sample
    can lose (no sample holds another one beside it) is left out.
    """
    hits: np.ndarray | None = None
    removals = {}
    for column, spec in enumerate(specs):
        others = arrays.mask.copy()
        others[:, column] = False
        rows = arrays.mask[:, column] & others.any(axis=1)
        if not rows.any():
            continue
        hits = _hits(model, arrays, specs) if hits is None else hits
        removals[spec.name] = ModalityRemoval(
            samples=int(rows.sum()), accuracy_with=float(hits[rows].mean()),
            accuracy_without=float(_hits(model, arrays.subset(rows).without_modality(column),
                                         specs).mean()))
    return removals


def mean_over_devices(removals: list[dict[str, ModalityRemoval]]) -> dict[str, ModalityRemoval]:
    """Per modality, the mean of several devices' removals, each device counting once.

    ``samples`` is their total; the accuracies are the means of the devices' accuracies, so a
    device weighs the same whatever number of samples it reports (as ``device_accuracy``
    does). A modality no device could lose is left out.
    """
    means = {}
    for name in dict.fromkeys(name for removal in removals for name in removal):
        parts = [removal[name] for removal in removals if name in removal]
        means[name] = ModalityRemoval(
            samples=sum(part.samples for part in parts),
            accuracy_with=float(np.mean([part.accuracy_with for part in parts])),
            accuracy_without=float(np.mean([part.accuracy_without for part in parts])))
    return means


def removal_metrics(removals: dict[str, ModalityRemoval],
                    names: list[str]) -> dict[str, int | float]:
    """An evaluation reply's metrics (:func:`fedmosaic.records.eval_without`) of ``removals``.

    Every modality of ``names`` is there; one the device could not lose has 0 samples.
    """
    metrics: dict[str, int | float] = {}
    for name in names:
        removal = removals.get(name, ModalityRemoval(0, 0.0, 0.0))
        samples, accuracy_with, accuracy_without = records.eval_without(name)
        metrics |= {samples: removal.samples, accuracy_with: removal.accuracy_with,
                    accuracy_without: removal.accuracy_without}
    return metrics


def removals_from_metrics(metrics: Mapping[str, Any],
                          names: list[str]) -> dict[str, ModalityRemoval]:
    """The inverse of :func:`removal_metrics`, without the modalities of 0 samples."""
    removals = {}
    for name in names:
        samples, accuracy_with, accuracy_without = records.eval_without(name)
        if metrics[samples]:
            removals[name] = ModalityRemoval(int(metrics[samples]), float(metrics[accuracy_with]),
                                             float(metrics[accuracy_without]))
    return removals


def worst_drop_points(removals: dict[str, ModalityRemoval]) -> float | None:
    """The largest drop over the modalities (``None`` if no modality can be removed)."""
    return max((r.drop_points for r in removals.values()), default=None)


def _hits(model: MultimodalClassifier, arrays: MultimodalArrays,
          specs: tuple[ModalitySpec, ...]) -> np.ndarray:
    """``(N,)`` whether ``model`` classifies each sample of ``arrays`` right (eval mode)."""
    hits = [(output.logits.argmax(dim=-1) == labels).numpy()
            for output, labels in outputs_by_batch(model, arrays, specs)]
    return np.concatenate(hits) if hits else np.zeros(0, bool)
