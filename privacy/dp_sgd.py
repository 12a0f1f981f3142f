r"""DP-SGD for one round of local training, with Opacus.

Abadi et al. 2016, "Deep Learning with Differential Privacy" (CCS, arXiv:1607.00133): every
step samples each example with probability :math:`q` (Poisson), clips each per-example
gradient to norm :math:`C`, sums, adds :math:`\mathcal{N}(0, \sigma^2 C^2 I)` and divides by
the expected batch size before the optimiser (here Adam) steps:

.. math::
    \tilde g = \frac{1}{qn}\Big(\sum_{i \in \mathcal{B}} g_i
    \min\big(1, C/\lVert g_i \rVert\big) + \mathcal{N}(0, \sigma^2 C^2 I)\Big).

Opacus's ``PrivacyEngine.make_private`` wraps the model (per-sample gradients), the optimiser
(clip and noise) and the loader (Poisson sampling). Per-sample gradients come from one of
Opacus's ``grad_sample_mode`` s; :data:`DEFAULT_GRAD_SAMPLE_MODE` is the fastest measured for
:class:`~fedmosaic.models.multimodal.MultimodalClassifier` (``benchmarks/dp_speed.py``).
Accounting is not done here: the caller composes ``(σ, q, steps)`` segments with
:mod:`fedmosaic.privacy.accounting`.

Both the noise and the Poisson sampling draw from generators seeded from the operating
system's entropy, never from the run seed: the server knows the seed, and subtracting
reproducible noise, or knowing which examples a step sampled, would void the guarantee.
(Opacus's ``secure_mode`` needs ``torchcsprng``, which has no build for current torch.)

The gate's load-balancing loss couples the samples of a batch (its per-sample gradient
depends on the other samples), which would void the per-example sensitivity bound, so its
weight is set to 0 under DP-SGD.
"""

from __future__ import annotations

import dataclasses
import secrets
import warnings

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from fedmosaic.config import GRAD_SAMPLE_MODES
from fedmosaic.data.modality import ModalitySpec
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import LossWeights, TrainResult, train

DEFAULT_GRAD_SAMPLE_MODE = "hooks"


def train_private(
    model: MultimodalClassifier,
    loader: DataLoader,
    specs: tuple[ModalitySpec, ...],
    *,
    epochs: int,
    learning_rate: float,
    weights: LossWeights,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    proximal_mu: float = 0.0,
    reference_params: list[torch.Tensor] | None = None,
) -> TrainResult:
    r"""Train ``model`` in place with DP-SGD (module docstring) for ``epochs`` Poisson epochs.

    Args:
        model: The classifier, already holding the global weights (Opacus wraps it; its own
            parameters are the ones trained, so its state dict keeps its keys).
        loader: A :func:`~fedmosaic.models.training.make_loader` loader of batch size
            :math:`B`; replaced by Poisson sampling at :math:`q = 1/\lceil n/B \rceil`.
        specs: The modalities, in the mask's column order.
        epochs: Passes (each :math:`\lceil n/B \rceil` steps), ``>= 1``.
        learning_rate: Adam step size, ``> 0``.
        weights: Loss weights; the balance weight is replaced by 0 (module docstring).
        noise_multiplier: σ, finite and ``> 0``.
        max_grad_norm: Clipping bound :math:`C`, finite and ``> 0``.
        grad_sample_mode: One of :data:`GRAD_SAMPLE_MODES`.
        proximal_mu: FedProx coefficient :math:`\mu`. The proximal gradient
            :math:`\mu (w - w_{\mathrm{ref}})` depends on no example, so it is added to the
            privatized gradient before each Adam step (post-processing, no privacy cost).
        reference_params: FedProx's reference weights, one per ``model.parameters()``
            entry; required when ``proximal_mu > 0``.

    Returns:
        The :class:`~fedmosaic.models.training.TrainResult`.

    Raises:
        ValueError: If an argument is out of range.

    """
    if not 0.0 < noise_multiplier < float("inf"):
        raise ValueError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    if not 0.0 < max_grad_norm < float("inf"):
        raise ValueError(f"max_grad_norm must be finite and > 0, got {max_grad_norm}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got "
                         f"{grad_sample_mode!r}")
    if len(loader.dataset) == 0:
        raise ValueError("train_private got a loader with no data (0 examples)")
    params = list(model.parameters())
    if proximal_mu > 0.0 and (reference_params is None or len(reference_params) != len(params)):
        got = "None" if reference_params is None else f"{len(reference_params)} tensors"
        raise ValueError("reference_params must hold one tensor per model parameter "
                         f"({len(params)}) when proximal_mu > 0, got {got}")
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    sampling_input = DataLoader(loader.dataset, batch_size=loader.batch_size,
                                generator=_entropy_generator())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant="rdp")
        private_model, private_optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=sampling_input,
            noise_generator=_entropy_generator(),
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=grad_sample_mode,
        )
    if proximal_mu > 0.0:
        reference = [r.detach() for r in reference_params]  # type: ignore[union-attr]

        def add_proximal_gradient(*_: object) -> None:
            with torch.no_grad():
                for param, anchor in zip(params, reference, strict=True):
                    if param.grad is not None:
                        param.grad.add_(param - anchor, alpha=proximal_mu)

        private_optimizer.original_optimizer.register_step_pre_hook(add_proximal_gradient)
    try:
        with warnings.catch_warnings():
            # Opacus's hooks on the first layer: its input needs no gradient, which is expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return train(
                private_model,  # type: ignore[arg-type]
                private_loader,
                specs,
                epochs=epochs,
                learning_rate=learning_rate,
                weights=dataclasses.replace(weights, balance=0.0),
                optimizer=private_optimizer,
            )
    finally:
        private_model._close()


def _entropy_generator() -> torch.Generator:
    """A CPU generator seeded with 63 bits from the operating system's entropy pool."""
    return torch.Generator().manual_seed(secrets.randbits(63))
