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

from dataclasses import dataclass

import torch

from fedmosaic.data.modality import ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import evaluate, make_loader


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

    A modality no sample can lose (no sample holds another one beside it) is left out.
    """
    removals = {}
    for column, spec in enumerate(specs):
        others = arrays.mask.copy()
        others[:, column] = False
        losable = arrays.subset(arrays.mask[:, column] & others.any(axis=1))
        if not len(losable):
            continue
        removals[spec.name] = ModalityRemoval(
            samples=len(losable),
            accuracy_with=_accuracy(model, losable, specs),
            accuracy_without=_accuracy(model, losable.without_modality(column), specs))
    return removals


def worst_drop_points(removals: dict[str, ModalityRemoval]) -> float | None:
    """The largest drop over the modalities (``None`` if no modality can be removed)."""
    return max((r.drop_points for r in removals.values()), default=None)


def _accuracy(model: MultimodalClassifier, arrays: MultimodalArrays,
              specs: tuple[ModalitySpec, ...]) -> float:
    return evaluate(model, make_loader(arrays, specs, 256, shuffle=False, seed=0),
                    specs).accuracy
