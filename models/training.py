r"""Framework-free local training and evaluation of a :class:`MultimodalClassifier`.

The local objective is

.. math::
    \mathcal{L} = \mathrm{CE} + \lambda_{\mathrm{KL}}\, \mathrm{KL}
    + \lambda_{\mathrm{c}}\, \mathcal{L}_{\mathrm{consistency}}
    + \lambda_{\mathrm{b}}\, \mathcal{L}_{\mathrm{balance}}
    + \lambda_{\mathrm{u}}\, \mathcal{L}_{\mathrm{unimodal}}
    + \frac{\mu}{2} \lVert w - w_{\mathrm{ref}} \rVert^2

where the last, proximal term is FedProx's (Li et al. 2020, "Federated Optimization in
Heterogeneous Networks", MLSys, arXiv:1812.06127), minimised with Adam (Kingma & Ba 2015).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedmosaic.data.modality import ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import ModelOutput, MultimodalClassifier
from fedmosaic.models.unimodal import unimodal_loss


@dataclass(frozen=True)
class LossWeights:
    r"""Weights of the auxiliary loss terms.

    Attributes:
        kl: :math:`\lambda_{\mathrm{KL}} \geq 0`, weight of the KL to the prior.
        consistency: :math:`\lambda_{\mathrm{c}} \geq 0`, weight of the cross-modal
            consistency loss.
        balance: :math:`\lambda_{\mathrm{b}} \geq 0`, weight of the gate's load-balancing
            loss (:mod:`fedmosaic.models.balance`).
        unimodal: :math:`\lambda_{\mathrm{u}} \geq 0`, weight of the unimodal views' loss
            (:mod:`fedmosaic.models.unimodal`); above 0 each batch is also classified with
            each modality alone.

    Raises:
        ValueError: If a weight is negative.

    """

    kl: float
    consistency: float
    balance: float = 0.0
    unimodal: float = 0.0

    def __post_init__(self) -> None:
        for name in ("kl", "consistency", "balance", "unimodal"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"LossWeights.{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class TrainResult:
    r"""Summary of one call to :func:`train`.

    Attributes:
        loss: Sample-weighted mean total loss over the last epoch.
        num_examples: Dataset size (examples per epoch).
        steps: Optimiser steps taken over all epochs.
        mean_embedding_variance: Mean of :math:`e^{\ell}` over the embedding dimensions of
            all present modalities in the last epoch (a confidence proxy: lower is surer).

    """

    loss: float
    num_examples: int
    steps: int
    mean_embedding_variance: float


@dataclass(frozen=True)
class EvalResult:
    """Summary of one call to :func:`evaluate`.

    Attributes:
        loss: Mean cross-entropy per example (0.0 for no data).
        accuracy: Fraction of correct predictions in ``[0, 1]`` (0.0 for no data).
        num_examples: Number of evaluated examples.

    """

    loss: float
    accuracy: float
    num_examples: int


def make_loader(
    arrays: MultimodalArrays,
    specs: tuple[ModalitySpec, ...],
    batch_size: int,
    shuffle: bool,
    seed: int,
) -> DataLoader:
    """Build a ``DataLoader`` over ``TensorDataset(*modalities in specs order, mask, labels)``.

    Modalities are float32 (int64 for tokens), the mask bool and the labels int64; the plain
    ``TensorDataset`` lets Opacus's ``DPDataLoader`` wrap the loader. An empty ``arrays`` gives
    an empty, unshuffled loader.

    Args:
        arrays: The samples.
        specs: The modalities, in the mask's column order.
        batch_size: Samples per batch, ``>= 1``.
        shuffle: Whether to reshuffle every epoch.
        seed: Seed of the shuffling generator.

    Returns:
        The loader; use :func:`split_batch` on its batches.

    Raises:
        ValueError: If ``batch_size < 1`` or a modality of ``specs`` is not in ``arrays``.

    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    missing = [spec.name for spec in specs if spec.name not in arrays.inputs]
    if missing:
        raise ValueError(f"arrays.inputs lacks modalities {missing} named in specs")
    tensors = [
        torch.from_numpy(np.ascontiguousarray(arrays.inputs[spec.name], dtype=spec.dtype))
        for spec in specs
    ]
    tensors.append(torch.from_numpy(np.ascontiguousarray(arrays.mask, dtype=np.bool_)))
    tensors.append(torch.from_numpy(np.ascontiguousarray(arrays.labels, dtype=np.int64)))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=shuffle and len(arrays) > 0,
        generator=generator,
    )


Augmentation = Callable[[dict[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]]
"""A batch's ``(inputs, mask)`` to new inputs of the same shapes (see :func:`train`)."""


def split_batch(
    batch: Sequence[torch.Tensor], specs: tuple[ModalitySpec, ...]
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Split a :func:`make_loader` batch into ``(inputs, mask, labels)``.

    Raises:
        ValueError: If the batch does not hold ``len(specs) + 2`` tensors.

    """
    if len(batch) != len(specs) + 2:
        raise ValueError(
            f"batch must hold len(specs) + 2 = {len(specs) + 2} tensors, got {len(batch)}"
        )
    inputs = {spec.name: tensor for spec, tensor in zip(specs, batch[:-2], strict=True)}
    return inputs, batch[-2], batch[-1]


def local_objective(model: MultimodalClassifier, inputs: dict[str, torch.Tensor],
                    mask: torch.Tensor, labels: torch.Tensor, weights: LossWeights
                    ) -> tuple[torch.Tensor, ModelOutput]:
    """The local objective without the proximal term (module docstring), and the forward pass.

    With ``weights.unimodal > 0`` the pass also classifies each modality alone, where a sample
    of the batch holds two or more (the views' loss is zero otherwise).
    """
    views = weights.unimodal > 0.0 and bool((mask.sum(dim=1) >= 2).any())
    output = model(inputs, mask, views=views)
    loss = (F.cross_entropy(output.logits, labels) + weights.kl * output.kl
            + weights.consistency * output.consistency + weights.balance * output.balance)
    if output.modality_logits is not None:
        loss = loss + weights.unimodal * unimodal_loss(output.modality_logits, mask, labels)
    return loss, output


def train(
    model: MultimodalClassifier,
    loader: DataLoader,
    specs: tuple[ModalitySpec, ...],
    epochs: int,
    learning_rate: float,
    weights: LossWeights,
    proximal_mu: float = 0.0,
    reference_params: list[torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    augment: Augmentation | None = None,
) -> TrainResult:
    r"""Train ``model`` in place with Adam on the local objective (module docstring).

    Empty batches (possible under Poisson sampling) are skipped.

    Args:
        model: The classifier to train.
        loader: A :func:`make_loader` loader (or a DP wrapper of it).
        specs: The modalities, in the mask's column order.
        epochs: Passes over the data, ``>= 1``.
        learning_rate: Adam step size, ``> 0``.
        weights: Weights of the auxiliary terms (:class:`LossWeights`).
        proximal_mu: FedProx coefficient :math:`\mu \geq 0`.
        reference_params: :math:`w_{\mathrm{ref}}`, one tensor per ``model.parameters()``
            entry in order; required when ``proximal_mu > 0``.
        optimizer: The optimiser to step (e.g. Opacus's DP wrapper around Adam); by default
            Adam over ``model.parameters()`` at ``learning_rate``.
        augment: Rewrites each batch's inputs from ``(inputs, mask)`` before the forward
            pass (e.g. public pretraining's reframing); ``None`` trains on them as they are.

    Returns:
        The :class:`TrainResult`.

    Raises:
        ValueError: If the loader has no data, an argument is out of range, or
            ``reference_params`` is missing or does not match the parameters.

    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not learning_rate > 0.0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if not proximal_mu >= 0.0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    params = list(model.parameters())
    if proximal_mu > 0.0:
        if reference_params is None:
            raise ValueError("reference_params is required when proximal_mu > 0, got None")
        if len(reference_params) != len(params) or any(
            r.shape != p.shape for r, p in zip(reference_params, params, strict=False)
        ):
            raise ValueError(
                "reference_params must match model.parameters() in number and shapes, got "
                f"{len(reference_params)} tensors for {len(params)} parameters"
            )
    if len(loader.dataset) == 0:
        raise ValueError("train got a loader with no data (0 examples)")
    reference = [r.detach() for r in reference_params] if proximal_mu > 0.0 else []
    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=learning_rate)
    model.train()
    steps = 0
    for _ in range(epochs):
        loss_sum, seen, variance_sum, variance_count = 0.0, 0, 0.0, 0
        for batch in loader:
            inputs, mask, labels = split_batch(batch, specs)
            if labels.shape[0] == 0:
                continue
            if augment is not None:
                inputs = augment(inputs, mask)
            loss, output = local_objective(model, inputs, mask, labels, weights)
            if proximal_mu > 0.0:
                distance = sum((p - r).pow(2).sum() for p, r in zip(params, reference, strict=True))
                loss = loss + 0.5 * proximal_mu * distance
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += float(loss.detach()) * labels.shape[0]
            seen += labels.shape[0]
            with torch.no_grad():
                variances = output.logvars.exp().mean(dim=-1)
                variance_sum += float(variances[mask].sum())
                variance_count += int(mask.sum())
    return TrainResult(
        loss=loss_sum / max(seen, 1),
        num_examples=len(loader.dataset),
        steps=steps,
        mean_embedding_variance=variance_sum / max(variance_count, 1),
    )


@torch.no_grad()
def outputs_by_batch(
    model: MultimodalClassifier, arrays: MultimodalArrays, specs: tuple[ModalitySpec, ...]
) -> Iterator[tuple[ModelOutput, torch.Tensor]]:
    """``model``'s output (eval mode) and the labels of each batch of ``arrays``, in order."""
    model.eval()
    for batch in make_loader(arrays, specs, 256, shuffle=False, seed=0):
        inputs, mask, labels = split_batch(batch, specs)
        yield model(inputs, mask), labels


@torch.no_grad()
def evaluate(
    model: MultimodalClassifier, loader: DataLoader, specs: tuple[ModalitySpec, ...]
) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (deterministic, ``z = mu``).

    Args:
        model: The classifier.
        loader: A :func:`make_loader` loader.
        specs: The modalities, in the mask's column order.

    Returns:
        The :class:`EvalResult`; all zeros for a loader without data.

    """
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for batch in loader:
        inputs, mask, labels = split_batch(batch, specs)
        if labels.shape[0] == 0:
            continue
        logits = model(inputs, mask).logits
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
        seen += labels.shape[0]
    if seen == 0:
        return EvalResult(loss=0.0, accuracy=0.0, num_examples=0)
    return EvalResult(loss=loss_sum / seen, accuracy=correct / seen, num_examples=seen)
