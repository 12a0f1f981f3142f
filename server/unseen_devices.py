"""Leave-subjects-out: the shared model on devices that never took part in training.

The ``unseen-devices`` partitions after the first ``num-clients`` never train. At the end of a
run each is evaluated as a newcomer would use the federation's model: it receives the final
global weights, fits only its personal parameters (``personalization``'s
:func:`~fedmosaic.models.personalization.personal_keys`, e.g. FedRep's head, FedBN's
normalisation) on its own training split for ``local-epochs``, the shared parameters frozen,
and is scored on its own held-out split. Without personal parameters (``none``, and
``ditto``, whose shared model is a whole model) the global model is scored as it is.

That gives the personalized methods some training on the newcomer's data that ``none`` does
not get; ``fit="head"`` gives every method the same adaptation instead: the newcomer fits the
classifier head alone (FedRep's newcomer protocol, applied to all), so the shared part's
representations are compared on equal terms. The server reads these partitions itself, which
only a simulation can do; a deployment's newcomers run the same steps on their devices.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.models.personalization import personal_keys, training_only
from fedmosaic.models.training import evaluate, make_loader, train
from fedmosaic.task import build_model, loss_weights


def evaluate_unseen_devices(config: RunConfig, dataset: FederatedDataset,
                            global_state: Mapping[str, torch.Tensor],
                            fit: str = "personal") -> dict[int, float]:
    """Accuracy per held-out partition (module docstring); empty without ``unseen-devices``.

    Args:
        config: The run config (``unseen-devices``, ``personalization``, training settings).
        dataset: The run's dataset.
        global_state: The final global weights.
        fit: What a newcomer fits on its own training split: ``"personal"`` (its
            personalization's personal parameters) or ``"head"`` (the classifier head).

    Raises:
        ValueError: If ``fit`` is unknown, or a held-out partition is not in the dataset.

    """
    if fit not in ("personal", "head"):
        raise ValueError(f"fit must be 'personal' or 'head', got {fit!r}")
    accuracies = {}
    for partition in config.unseen_partitions:
        train_arrays, test_arrays = dataset.partition(partition)
        model = build_model(config, dataset)
        model.load_state_dict(dict(global_state))
        fitted = personal_keys(model, config.personalization) if fit == "personal" else (
            frozenset(k for k in model.state_dict() if k.startswith("classifier.")))
        if fitted and len(train_arrays):
            with training_only(model, fitted):
                train(model, make_loader(train_arrays, dataset.specs, config.batch_size,
                                         shuffle=True, seed=config.seed + partition),
                      dataset.specs, epochs=config.local_epochs,
                      learning_rate=config.learning_rate, weights=loss_weights(config))
        with torch.no_grad():
            accuracies[partition] = evaluate(
                model, make_loader(test_arrays, dataset.specs, 256, shuffle=False, seed=0),
                dataset.specs).accuracy
    return accuracies
