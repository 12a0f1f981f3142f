"""Pretraining on public data: the server trains the initial model on consented donors' data.

DP-SGD from scratch on a few hundred windows per device learns little (Tramèr & Boneh 2021,
"Differentially Private Learning Needs Better Features (or Much More Data)", ICLR). Features
learned on public data help: the ``public-devices`` partitions (after the devices and the
unseen ones) are donors who consented to share their training data. Before the first round
the server trains the model on their pooled training split, plainly, for ``pretrain-epochs``;
with ``fine-tune=top`` the devices then DP-train only the heads, fusion and classifier on top
of these encoders. The donors' data is left out of every evaluation: they are no device, no
unseen device, and the central test set drops their samples
(:meth:`~fedmosaic.data.datasets.FederatedDataset.central_test_without`). Pretraining spends
no device's ε: no device's data is touched.

With ``pretrain-reframe`` R > 0 every pretraining batch is augmented: each sample's sensor
windows move to a random frame of strength r ~ U(0, R), drawn afresh at every read (one
rotation shared by the sample's three-axis groups, a gain and an offset per channel;
:func:`~fedmosaic.privacy.anonymizer.reframe.reframe`). These are the wearable augmentations
of Um et al. 2017 ("Data Augmentation of Wearable Sensor Data for Parkinson's Disease
Monitoring using Convolutional Neural Networks", ICMI): how a device sits on its wearer and
each sensor's bias differ from subject to subject, so encoders pretrained on a few donors'
frames likely read those frames along with the activity, which does not carry over to other
subjects (README, "Pretraining on random frames", measures the gain). A sensor with 3k channels
is rotated as k x, y, z triples, whatever its channels are: use it on wearable motion data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.data.modality import ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import Augmentation, make_loader, train
from fedmosaic.privacy.anonymizer.reframe import reframe
from fedmosaic.task import loss_weights


def pretrain_on_public_devices(config: RunConfig, dataset: FederatedDataset,
                               model: MultimodalClassifier,
                               partitions: Sequence[int] | None = None) -> dict[str, Any]:
    """Train ``model`` in place on the public devices' training data (module docstring).

    ``partitions`` picks some of the donors (default: all of ``config.public_partitions``).

    Returns:
        What was done: ``partitions``, ``samples``, ``epochs``, ``reframe`` (R) and the last
        epoch's ``loss``.

    Raises:
        ValueError: If the public devices hold no training data.

    """
    partitions = list(config.public_partitions if partitions is None else partitions)
    public = MultimodalArrays.concatenate([dataset.partition(p)[0] for p in partitions])
    if not len(public):
        raise ValueError(f"public-devices {partitions} hold no training samples to pretrain on")
    result = train(model, make_loader(public, dataset.specs, config.batch_size, shuffle=True,
                                      seed=config.seed),
                   dataset.specs, epochs=config.pretrain_epochs,
                   learning_rate=config.learning_rate, weights=loss_weights(config),
                   augment=reframing(dataset.specs, config.pretrain_reframe, config.seed))
    return {"partitions": partitions, "samples": len(public), "epochs": config.pretrain_epochs,
            "reframe": config.pretrain_reframe, "loss": result.loss}


def reframing(specs: tuple[ModalitySpec, ...], most: float, seed: int) -> Augmentation | None:
    """Reframe each batch at r ~ U(0, ``most``) per sample, seeded; ``None`` when ``most`` is 0."""
    if most == 0.0:
        return None
    generator = torch.Generator().manual_seed(seed)

    def augment(inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        strength = most * torch.rand(len(mask), generator=generator)
        return reframe(inputs, mask, specs, strength, generator)

    return augment
