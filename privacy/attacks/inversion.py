r"""Gradient inversion of one client's update on the sensor modality.

Attack: *Inverting Gradients* (Geiping, Bauermeister, Dröge, Moeller 2020, "Inverting
Gradients — How easy is it to break privacy in federated learning?", NeurIPS,
arXiv:2003.14053), the successor of DLG (Zhu, Liu, Han 2019, "Deep Leakage from Gradients",
NeurIPS). Given the observed update :math:`g` of a client's local step, the attacker searches
for the input :math:`\hat x` (every sensor modality) whose gradient points the same way:

.. math::
    \hat x = \arg\min_x \; 1 - \frac{\langle \nabla_\theta \mathcal{L}(x, y), g \rangle}
    {\lVert \nabla_\theta \mathcal{L}(x, y) \rVert \, \lVert g \rVert}
    + \alpha\, \mathrm{TV}(x),

with Adam on the *signed* gradient of :math:`x` (as in Geiping et al.), known labels
:math:`y`, and :math:`\mathrm{TV}(x)` the mean absolute difference of neighbouring time steps.

Threat model, the attacker's best case: the client's step is on a single window (no other
samples mix into the update), the labels are known, and the model runs in eval mode, i.e.
without the reparameterisation noise of the probabilistic embeddings (the encoders have no
dropout or BatchNorm, so this is the only difference). Modalities that are not sensor time
series are marked missing in the attacked sample.

The DP-SGD update of the same step (Abadi et al. 2016, "Deep Learning with Differential
Privacy", CCS) is the clipped gradient plus Gaussian noise,
:math:`\tilde g = g \cdot \min(1, C / \lVert g \rVert) + \mathcal{N}(0, \sigma^2 C^2 I)`.

Reconstruction quality: :math:`\mathrm{MSE} = \lVert \hat x - x \rVert^2 / n` and
:math:`\mathrm{PSNR} = 10 \log_{10} (\mathrm{range}(x)^2 / \mathrm{MSE})` in dB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import LossWeights, local_objective


@dataclass(frozen=True)
class InversionResult:
    """The outcome of one inversion.

    Attributes:
        mse: Mean squared error of the reconstruction over all sensor values.
        psnr_db: Peak signal-to-noise ratio in dB (peak: the true sample's value range).
        channel_statistics_error: :func:`channel_statistics_error` of the reconstruction.
        gradient_cosine_distance: The attack objective's cosine term at the end.
        reconstruction: ``{modality: (C, T) array}`` the attacker recovered.

    """

    mse: float
    psnr_db: float
    channel_statistics_error: float
    gradient_cosine_distance: float
    reconstruction: dict[str, np.ndarray]


def sensor_target(arrays: MultimodalArrays, specs: tuple[ModalitySpec, ...], index: int
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sample ``index`` as a batch of one, with only its sensor modalities present.

    Raises:
        ValueError: If ``index`` is out of range or the sample has no sensor modality.

    """
    if not 0 <= index < len(arrays):
        raise ValueError(f"index must lie in [0, {len(arrays)}), got {index}")
    sensors = [spec.kind == ModalityKind.SENSOR for spec in specs]
    mask = torch.from_numpy(arrays.mask[index : index + 1] & np.array(sensors))
    if not bool(mask.any()):
        raise ValueError(f"sample {index} has no sensor modality to invert (specs "
                         f"{[s.name for s in specs]}, mask {arrays.mask[index].tolist()})")
    inputs = {spec.name: torch.from_numpy(
        np.ascontiguousarray(arrays.inputs[spec.name][index : index + 1], dtype=spec.dtype))
        for spec in specs}
    labels = torch.from_numpy(np.asarray(arrays.labels[index : index + 1], dtype=np.int64))
    return inputs, mask, labels


def client_update(model: MultimodalClassifier, inputs: dict[str, torch.Tensor],
                  mask: torch.Tensor, labels: torch.Tensor, weights: LossWeights,
                  clip_norm: float | None = None, noise_multiplier: float = 0.0,
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    r"""The gradient a client's step on this batch of one reveals; DP-SGD's if ``clip_norm``.

    Args:
        model: The global model the step starts from.
        inputs: One sample's modalities (batch of one).
        mask: ``(1, M)`` presence mask.
        labels: ``(1,)`` label.
        weights: Weights of the local objective's auxiliary terms.
        clip_norm: DP-SGD's clipping bound :math:`C > 0`; ``None``: no DP.
        noise_multiplier: :math:`\sigma \ge 0` (only with ``clip_norm``).
        generator: Randomness of the noise.

    Returns:
        One tensor per ``model.parameters()`` entry.

    Raises:
        ValueError: If the batch is not a single sample or a DP parameter is out of range.

    """
    if labels.shape != (1,):
        raise ValueError(f"client_update inverts a batch of one; got labels of shape "
                         f"{tuple(labels.shape)}")
    if clip_norm is not None and not clip_norm > 0.0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}")
    if not noise_multiplier >= 0.0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    model.eval()
    params = list(model.parameters())
    grads = torch.autograd.grad(local_objective(model, inputs, mask, labels, weights)[0], params,
                                allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads,
                                                                             strict=True)]
    if clip_norm is None:
        return grads
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    factor = min(1.0, clip_norm / (float(norm) + 1e-12))
    return [g * factor + noise_multiplier * clip_norm * torch.randn(
        g.shape, generator=generator, dtype=g.dtype) for g in grads]


def invert_gradients(
    loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    params: list[torch.Tensor],
    observed: list[torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    iterations: int = 400,
    learning_rate: float = 0.1,
    tv_weight: float = 1e-3,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], float]:
    r"""Reconstruct the inputs behind ``observed`` (module docstring).

    Args:
        loss_of: The victim's loss as a function of the unknown inputs (the attacker knows
            the model, the labels and the objective).
        params: The parameters the update is the gradient of.
        observed: The update, one tensor per entry of ``params``.
        shapes: ``{name: shape}`` of the unknown inputs (time is the last axis).
        iterations: Adam steps, ``>= 1``.
        learning_rate: Adam step size; decayed by 10x at 3/8, 5/8 and 7/8 of the steps.
        tv_weight: :math:`\alpha \ge 0`.
        seed: Seed of the random initial guess.

    Returns:
        ``({name: tensor of shapes[name]}, the final cosine term)``.

    Raises:
        ValueError: If an argument is out of range or ``observed`` does not match ``params``.

    """
    if len(observed) != len(params) or any(
            o.shape != p.shape for o, p in zip(observed, params, strict=True)):
        raise ValueError(f"observed must hold one tensor per model parameter ({len(params)}), "
                         f"matching shapes; got {len(observed)}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not (learning_rate > 0.0 and tv_weight >= 0.0):
        raise ValueError(f"need learning_rate > 0 and tv_weight >= 0, got {learning_rate} "
                         f"and {tv_weight}")
    generator = torch.Generator().manual_seed(seed)
    guess = {name: torch.randn(shape, generator=generator).requires_grad_(True)
             for name, shape in shapes.items()}
    target = torch.cat([o.reshape(-1) for o in observed])
    target_norm = target.norm() + 1e-12
    optimizer = torch.optim.Adam(list(guess.values()), lr=learning_rate)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    for _ in range(iterations):
        optimizer.zero_grad()
        grads = torch.autograd.grad(loss_of(guess), params, create_graph=True,
                                    allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for p, g in zip(params, grads, strict=True)])
        cosine = 1.0 - (flat @ target) / (flat.norm() * target_norm + 1e-12)
        tv = sum((x[..., 1:] - x[..., :-1]).abs().mean() for x in guess.values())
        (cosine + tv_weight * tv).backward()
        for x in guess.values():
            x.grad.sign_()
        optimizer.step()
        scheduler.step()
    return {name: x.detach() for name, x in guess.items()}, float(cosine.detach())


def reconstruction_quality(truth: dict[str, torch.Tensor], guess: dict[str, torch.Tensor]
                           ) -> tuple[float, float]:
    """``(MSE, PSNR in dB)`` over the modalities of ``guess``; peak is truth's value range."""
    true = torch.cat([truth[name].reshape(-1) for name in guess]).double()
    found = torch.cat([guess[name].reshape(-1) for name in guess]).double()
    mse = float((found - true).pow(2).mean())
    peak = float(true.max() - true.min())
    psnr = math.inf if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)
    return mse, psnr


def channel_statistics_error(truth: dict[str, torch.Tensor], guess: dict[str, torch.Tensor]
                             ) -> float:
    """Mean absolute error of the per-channel means and standard deviations over time.

    What an update leaks when the waveform itself is not recovered: the sensor encoder pools
    over time, so the update pins down a window's channel statistics more than its shape.
    """
    errors = []
    for name, found in guess.items():
        true = truth[name].reshape(-1, truth[name].shape[-1]).double()
        found = found.reshape(-1, found.shape[-1]).double()
        errors.append((true.mean(-1) - found.mean(-1)).abs())
        errors.append((true.std(-1) - found.std(-1)).abs())
    return float(torch.cat(errors).mean())


def invert_sample(model: MultimodalClassifier, arrays: MultimodalArrays,
                  specs: tuple[ModalitySpec, ...], index: int, weights: LossWeights,
                  clip_norm: float | None = None, noise_multiplier: float = 0.0,
                  iterations: int = 400, seed: int = 0) -> InversionResult:
    """Attack the (DP-SGD, if ``clip_norm``) update of a one-window step on sample ``index``.

    Raises:
        ValueError: As :func:`sensor_target`, :func:`client_update`, :func:`invert_gradients`.

    """
    inputs, mask, labels = sensor_target(arrays, specs, index)
    noise = torch.Generator().manual_seed(seed + 1)
    observed = client_update(model, inputs, mask, labels, weights, clip_norm,
                             noise_multiplier, noise)
    unknown = {s.name: (1, *s.shape) for i, s in enumerate(specs) if bool(mask[0, i])}
    known = {name: torch.zeros_like(x) for name, x in inputs.items() if name not in unknown}
    model.eval()
    guess, cosine = invert_gradients(
        lambda x: local_objective(model, {**x, **known}, mask, labels, weights)[0],
        list(model.parameters()), observed, unknown, iterations=iterations, seed=seed)
    mse, psnr = reconstruction_quality(inputs, guess)
    return InversionResult(mse=mse, psnr_db=psnr,
                           channel_statistics_error=channel_statistics_error(inputs, guess),
                           gradient_cosine_distance=cosine,
                           reconstruction={k: v[0].numpy() for k, v in guess.items()})
