"""DP-SGD's hyperparameters chosen per ε on the donors' public data, at no device's ε.

Choosing DP-SGD's settings by the accuracy they reach on private data leaks through the choice
(Papernot & Steinke 2022, "Hyperparameter Tuning with Renyi Differential Privacy", ICLR), and
the settings that suit one ε do not suit another (fewer, larger steps as ε shrinks: Ponomareva
et al. 2023, "How to DP-fy ML", §5). With ``public-devices`` K >= 2 consented donors, each
candidate (local epochs E, learning rate η, clipping bound C) is scored leave-one-donor-out:

1. the model is pretrained on the other donors' training data for ``pretrain-epochs``, with the
   run's ``pretrain-reframe`` (as the server pretrains on all donors before a run);
2. one simulated device holding the left-out donor's training split runs the run's DP-SGD
   regime: ``num-server-rounds`` rounds of E Poisson epochs at ``batch-size``, a fresh Adam
   each round, training what ``fine-tune`` names, with the noise multiplier σ calibrated so
   that all its rounds together spend exactly ε at ``delta``;
3. the donor's held-out split scores it.

A candidate's score is its mean accuracy over the K folds; the best one's settings are the
``-c`` overrides to run with. The proxy is one device: in a federation FedAvg averages m
devices' independently noised updates, so the federated model sees less noise than the proxy.
The proxy ranks candidates; it does not predict the federated accuracy. Averaging m simulated
devices that all hold the left-out donor's data removes the first bias but adds a worse one:
they cannot drift apart as different subjects do, so large learning rates win that make the
real federation collapse (README, "DP-SGD settings per ε"). The batch size stays the run's
``batch-size`` for the same reason: with B = 128 in the grid the proxy chose it in 5 of 9 (seed,
ε) pairs, twice with η = 0.03, and the tuned federation lost more than with B fixed (README).
Each candidate gets one draw of DP-SGD's noise and sampling per fold (Opacus draws them from the
OS's entropy), so candidates a point or two apart are not told apart; the per-fold accuracies
are reported. The proxy follows the run's even plan: per-device budgets, a controller's spend
shares and ``fraction-train`` < 1 change a device's σ, which the proxy does not model, nor
personal parameters (``personalization``), a server step or momentum (``fedavgm``) or FedProx's
μ. No device's data is read, so the tuning spends no device's ε.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.data.modality import MultimodalArrays
from fedmosaic.models.fine_tuning import fine_tuned_parameters
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.personalization import training_only
from fedmosaic.models.training import evaluate, make_loader
from fedmosaic.privacy.accounting import calibrate_noise_multiplier, poisson_plan
from fedmosaic.privacy.dp_sgd import train_private
from fedmosaic.server.public_pretraining import pretrain_on_public_devices
from fedmosaic.task import build_model, loss_weights

LOCAL_EPOCHS = (1, 2, 5)
LEARNING_RATES = (0.003, 0.01, 0.03)
CLIPPING_BOUNDS = (0.1, 1.0)


@dataclass(frozen=True)
class Candidate:
    """One DP-SGD setting: local epochs E, Adam step size η and clipping bound C."""

    local_epochs: int
    learning_rate: float
    max_grad_norm: float

    def overrides(self) -> dict[str, float | int]:
        """The run-config overrides that select this setting."""
        return {"local-epochs": self.local_epochs, "learning-rate": self.learning_rate,
                "max-grad-norm": self.max_grad_norm}


@dataclass(frozen=True)
class Scored:
    """A candidate's accuracy on each left-out donor and their mean."""

    candidate: Candidate
    fold_accuracies: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        """Mean over the folds."""
        return sum(self.fold_accuracies) / len(self.fold_accuracies)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the candidate's overrides, per-fold and mean accuracy."""
        return {**self.candidate.overrides(), "fold_accuracies": list(self.fold_accuracies),
                "accuracy": self.accuracy}


def candidates() -> list[Candidate]:
    """The grid: every combination of the local epochs, learning rates and clipping bounds."""
    return [Candidate(*values)
            for values in itertools.product(LOCAL_EPOCHS, LEARNING_RATES, CLIPPING_BOUNDS)]


def tune_on_public_devices(config: RunConfig, dataset: FederatedDataset,
                           grid: list[Candidate] | None = None) -> list[Scored]:
    """Score every candidate of ``grid`` (default :func:`candidates`) at the run's ε.

    ε is ``dp-epsilon-budget``; the run's ``num-server-rounds``, ``batch-size``, ``delta``,
    ``fine-tune``, ``pretrain-epochs`` and ``pretrain-reframe`` are kept, and ``seed``
    initialises the model. Returns the candidates, best first.

    Raises:
        ValueError: Without ``dp``, with fewer than 2 public devices (one to pretrain on, one to
            tune on), without ``pretrain-epochs``, or if a donor holds no held-out samples.
    """
    if not config.dp:
        raise ValueError("tune-dp chooses DP-SGD's settings: set dp=true (and the run's "
                         "dp-epsilon-budget), got dp=false")
    donors = list(config.public_partitions)
    if len(donors) < 2:
        raise ValueError(f"tuning DP-SGD on public data needs public-devices >= 2 (pretrain on "
                         f"the others, tune on one), got {len(donors)}")
    if not config.pretrain_epochs:
        raise ValueError("tuning DP-SGD on public data needs pretrain-epochs >= 1, got 0")
    grid = candidates() if grid is None else grid
    accuracies: dict[Candidate, list[float]] = {c: [] for c in grid}
    for held_out in donors:
        train, test = dataset.partition(held_out)
        if not len(test):
            raise ValueError(f"public device {held_out} holds no held-out samples to score "
                             f"settings on: set local-test-fraction > 0, got "
                             f"{config.local_test_fraction}")
        pretrained = build_model(config, dataset)
        pretrain_on_public_devices(config, dataset, pretrained,
                                   [d for d in donors if d != held_out])
        test_loader = make_loader(test, dataset.specs, 256, shuffle=False, seed=0)
        for candidate in grid:
            model = copy.deepcopy(pretrained)
            train_like_a_device(model, config, dataset, train, candidate)
            accuracies[candidate].append(evaluate(model, test_loader, dataset.specs).accuracy)
    scored = [Scored(c, tuple(accuracies[c])) for c in grid]
    return sorted(scored, key=lambda s: -s.accuracy)


def train_like_a_device(model: MultimodalClassifier, config: RunConfig,
                        dataset: FederatedDataset, train: MultimodalArrays,
                        candidate: Candidate) -> None:
    """The run's DP-SGD rounds on ``train`` under ``candidate``, spending exactly the run's ε."""
    loader = make_loader(train, dataset.specs, config.batch_size, shuffle=True,
                         seed=config.seed)
    sample_rate, steps, planned = poisson_plan(len(train), config.batch_size,
                                               candidate.local_epochs, config.num_server_rounds)
    sigma = calibrate_noise_multiplier(config.dp_epsilon_budget, config.delta, sample_rate,
                                       planned, accountant=config.accountant)
    with training_only(model, fine_tuned_parameters(model, config.fine_tune)):
        for _ in range(config.num_server_rounds):
            train_private(model, loader, dataset.specs, epochs=candidate.local_epochs,
                          learning_rate=candidate.learning_rate, weights=loss_weights(config),
                          noise_multiplier=sigma, max_grad_norm=candidate.max_grad_norm,
                          grad_sample_mode=config.grad_sample_mode)


def as_report(scored: list[Scored]) -> dict[str, object]:
    """JSON-ready result: the best overrides and every candidate's scores, best first."""
    return {"best": scored[0].candidate.overrides(), "best_accuracy": scored[0].accuracy,
            "candidates": [s.to_dict() for s in scored],
            "grid": {"local_epochs": LOCAL_EPOCHS, "learning_rates": LEARNING_RATES,
                     "clipping_bounds": CLIPPING_BOUNDS}}
