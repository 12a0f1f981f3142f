r"""The ClientApp's DP-SGD round: budget, calibration, the refusal rule and the account.

A device's ε budget is, first match wins: the training config's ``dp-epsilon-budget`` (the
server changes budgets between rounds this way), the node config's ``dp-epsilon-budget``,
the ``privacy-budgets`` file's entry for the partition, the run config's ``dp-epsilon-budget``.
Its σ is calibrated once, for the budget and the rounds still planned (again only when the budget
changes). Under a controller the training config carries this round's ``dp-spend-share`` s
instead: σ is calibrated for this round alone (to 1 % of the share), so that the Rényi
filter's ε after it is :math:`\varepsilon_0 + s\,(\varepsilon_{budget} - \varepsilon_0)`, with
:math:`\varepsilon_0` the ε after the cheapest possible round (:func:`~fedmosaic.privacy.
accounting.least_round_epsilon`; :mod:`fedmosaic.privacy.renyi_filter`; ``config.accountant`` is
then ``filter``); no budget above :math:`\varepsilon_0` means a refusal. A device whose
next round would push its ε past the budget does not train and says so (``dp-refused = 1``).
After a server restart the training config may carry the device's
segments from before it (``dp-prior-<partition-id>``, from the server's ledger); a device
without an account of its own starts from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from torch.utils.data import DataLoader

from fedmosaic import records
from fedmosaic.clients.device_state import device_state_file
from fedmosaic.config import RENAMED_KEYS, RunConfig
from fedmosaic.data.modality import ModalitySpec
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import TrainResult
from fedmosaic.privacy.accounting import (
    Segment,
    calibrate_noise_multiplier,
    least_round_epsilon,
    poisson_plan,
)
from fedmosaic.privacy.budgets import assigned_epsilon_budget
from fedmosaic.privacy.client_account import ClientPrivacyAccount
from fedmosaic.privacy.dp_sgd import train_private
from fedmosaic.task import loss_weights


@dataclass(frozen=True)
class PrivateRound:
    """Outcome of :func:`train_private_round`.

    Attributes:
        result: The training result, ``None`` if the device refused to train.
        metrics: Reply metrics (``records.DP_*`` and ``partition-id``).

    """

    result: TrainResult | None
    metrics: dict[str, int | float]


def client_epsilon_budget(config: RunConfig, node_config: Mapping[str, Any], partition_id: int,
                  received: Mapping[str, Any]) -> float:
    """The device's ε budget (module docstring for the order of precedence).

    Raises:
        ValueError: If the chosen budget is not a finite number > 0.

    """
    for old, new in RENAMED_KEYS.items():
        if old in node_config:
            raise ValueError(f"node config key {old!r} is now {new!r}; got node config keys "
                             f"{sorted(node_config)}")
    if records.DP_EPSILON_BUDGET in received:
        source, value = "training config", received[records.DP_EPSILON_BUDGET]
    elif records.DP_EPSILON_BUDGET in node_config:
        source, value = "node config", node_config[records.DP_EPSILON_BUDGET]
    else:
        source, value = "run config or privacy-budgets", assigned_epsilon_budget(config,
                                                                                 partition_id)
    epsilon_budget = float(value)
    if not 0.0 < epsilon_budget < math.inf:
        raise ValueError(f"epsilon budget ({source}) must be finite and > 0, got {value!r}")
    return epsilon_budget


def spend_share(value: Any) -> float:
    """A controller's ``dp-spend-share``, checked: a number in (0, 1].

    Raises:
        ValueError: If it is not a number in (0, 1].

    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"{records.DP_SPEND_SHARE} must be a number in (0, 1], got {value!r}")
    return float(value)


def account_file(config: RunConfig, context: Context, partition_id: int) -> Path | None:
    """Where the device keeps its account: ``state-dir/<run>/partition-<id>-dp.json``."""
    return device_state_file(config, context, partition_id, "dp.json")


def load_account(context: Context, path: Path | None) -> ClientPrivacyAccount:
    """The account from ``context.state`` or from ``path``, whichever has more history."""
    in_state = (ClientPrivacyAccount.from_record(context.state[records.DP_ACCOUNT])
                if records.DP_ACCOUNT in context.state else ClientPrivacyAccount())
    on_disk = ClientPrivacyAccount.load(path) if path is not None else ClientPrivacyAccount()
    return on_disk if len(on_disk.history) > len(in_state.history) else in_state


def save_account(account: ClientPrivacyAccount, context: Context, path: Path | None) -> None:
    """Store the account in ``context.state`` and, if given, in ``path``."""
    context.state[records.DP_ACCOUNT] = account.to_record()
    if path is not None:
        account.save(path)


def prior_segments(flat: Sequence[float]) -> list[Segment]:
    """Segments from a ``dp-prior-<id>`` list ``[σ, q, steps, σ, q, steps, ...]``.

    Raises:
        ValueError: If the length is not a multiple of 3 (or a segment is invalid).

    """
    if len(flat) % 3:
        raise ValueError(f"{records.DP_PRIOR_PREFIX}<id> must hold [σ, q, steps] triples, got "
                         f"{len(flat)} values")
    return [Segment(float(flat[i]), float(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)]


def train_private_round(
    model: MultimodalClassifier,
    loader: DataLoader,
    specs: tuple[ModalitySpec, ...],
    config: RunConfig,
    context: Context,
    partition_id: int,
    received: Mapping[str, Any],
    *,
    learning_rate: float,
    proximal_mu: float,
    reference_params: list[torch.Tensor] | None,
) -> PrivateRound:
    """One round of DP-SGD, or a refusal if it would exceed the device's budget.

    Args:
        model: The classifier holding the global weights; trained in place.
        loader: The device's training loader (batch size ``batch-size``).
        specs: The modalities, in the mask's column order.
        config: The run config (``delta``, ``max-grad-norm``, ``dp-accountant``, ...).
        context: The ClientApp's context (account in ``state``, ``state-dir`` in node config).
        partition_id: The device's partition.
        received: The training message's config record (``server-round``, budget).
        learning_rate: Adam step size.
        proximal_mu: FedProx coefficient.
        reference_params: FedProx's reference weights.

    Returns:
        The :class:`PrivateRound`.

    """
    path = account_file(config, context, partition_id)
    account = load_account(context, path)
    prior = received.get(f"{records.DP_PRIOR_PREFIX}{partition_id}")
    if not account.history and prior:  # a restarted server's ledger: spend from before
        account.history = prior_segments(prior)
    epsilon_budget = client_epsilon_budget(config, context.node_config, partition_id, received)
    sample_rate, steps, _ = poisson_plan(len(loader.dataset), config.batch_size,
                                         config.local_epochs, 1)
    server_round = int(received.get(records.SERVER_ROUND, 1))
    rounds_left = max(1, config.num_server_rounds - server_round + 1)
    refused = False
    share = received.get(records.DP_SPEND_SHARE)
    if share is not None or account.epsilon_budget != epsilon_budget or (
            account.noise_multiplier <= 0.0):
        target, planned, tolerance = epsilon_budget, steps * rounds_left, 0.01
        if share is not None:  # the controller's share of what is left, for this round only
            least = least_round_epsilon(account.history, sample_rate, steps, config.delta,
                                        config.accountant)
            target = least + spend_share(share) * (epsilon_budget - least)
            planned, tolerance = steps, max(1e-9, 0.01 * (target - least))
        try:
            sigma = calibrate_noise_multiplier(target, config.delta, sample_rate, planned,
                                               tuple(account.history), config.accountant,
                                               tolerance)
            account.epsilon_budget, account.noise_multiplier = epsilon_budget, sigma
        except ValueError:  # the history alone exhausts the new budget (or the share)
            refused = True
    segment = (Segment(account.noise_multiplier, sample_rate, steps)
               if account.noise_multiplier > 0.0 else None)
    spent_after = (account.spent_after(segment, config.delta, config.accountant)
                   if segment is not None and not refused else math.inf)
    result = None
    if spent_after <= epsilon_budget:
        result = train_private(model, loader, specs, epochs=config.local_epochs,
                               learning_rate=learning_rate, weights=loss_weights(config),
                               noise_multiplier=account.noise_multiplier,
                               max_grad_norm=config.max_grad_norm,
                               grad_sample_mode=config.grad_sample_mode,
                               proximal_mu=proximal_mu, reference_params=reference_params)
        account.history.append(segment)  # type: ignore[arg-type]
    save_account(account, context, path)
    return PrivateRound(result=result, metrics={
        records.PARTITION_ID: partition_id,
        records.DP_EPSILON_SPENT: (spent_after if result is not None
                                   else account.spent(config.delta, config.accountant)),
        records.DP_EPSILON_BUDGET: epsilon_budget,
        records.DP_DELTA: config.delta,
        records.DP_NOISE_MULTIPLIER: account.noise_multiplier,
        records.DP_REFUSED: int(result is None),
        records.DP_SAMPLE_RATE: sample_rate,
        records.DP_STEPS: steps if result is not None else 0,
    })
