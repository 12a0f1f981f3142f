r"""Reframing: each sample's sensor windows moved to a random orientation, gain and offset.

A wearable's windows carry their wearer in the frame they were recorded in: how the device
sits on the body (the axes' orientation against gravity and the body), each axis's gain and
each sensor's bias. Those differ between people far more than between activities, so a fresh
identity attacker reads them even from windows whose detail is gone, while an activity model
learns to ignore them when it sees them vary. Reframing draws them anew for every sample, as
the wearable augmentations of Um et al. 2017 ("Data Augmentation of Wearable Sensor Data for
Parkinson's Disease Monitoring using Convolutional Neural Networks", ICMI,
arXiv:1706.00527) do for robustness: rotation, scaling, and here an offset.

With reframing strength :math:`r \in [0, 1]`, per sample one rotation
:math:`R = \exp(\alpha [u]_\times)`, axis :math:`u` uniform on the sphere and angle
:math:`\alpha = r\,\theta\,v`, :math:`v \sim U(-1, 1)`, is shared by every three-axis group of
every sensor modality of the sample (the sensors ride on one device); then each channel
:math:`c` gets a gain and an offset:

.. math::
    \tilde x_c = e^{r \sigma_g \xi_c}\, (R x)_c + r \sigma_b \zeta_c, \qquad
    \xi_c, \zeta_c \sim \mathcal{N}(0, 1),

on standardized data. :math:`r = 0` is the identity. A sensor modality whose channel count is
not a multiple of three gets gain and offset only; images, audio and log tokens are left as
they are (they have no recording frame of this kind).
"""

from __future__ import annotations

import math

import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec

MAX_ANGLE = math.pi / 4
r"""Largest rotation angle :math:`\theta` (radians) at :math:`r = 1`."""
GAIN_STD = 0.3
r""":math:`\sigma_g`: standard deviation of the log-gain at :math:`r = 1`."""
OFFSET_STD = 0.3
r""":math:`\sigma_b`: standard deviation of the offset at :math:`r = 1` (standardized units)."""


def random_rotations(angles: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    r"""``(B, 3, 3)`` rotations by ``angles`` about axes uniform on the sphere.

    :math:`R = \exp(\alpha K)`, :math:`K = [u]_\times` (``torch.linalg.matrix_exp``).
    """
    axes = torch.randn(len(angles), 3, generator=generator)
    axes = axes / axes.norm(dim=1, keepdim=True).clamp(min=1e-12)
    x, y, z = axes.unbind(1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).view(-1, 3, 3)
    return torch.linalg.matrix_exp(angles.view(-1, 1, 1) * cross)


def reframe(inputs: dict[str, torch.Tensor], mask: torch.Tensor,
            specs: tuple[ModalitySpec, ...], strength: torch.Tensor,
            generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The sensor modalities of ``inputs`` reframed at per-sample ``strength`` (module docstring).

    Args:
        inputs: ``{name: (B, *shape)}``; sensor windows are ``(B, channels, time)``.
        mask: ``(B, M)`` presence mask, columns in ``specs``' order.
        specs: The modalities.
        strength: ``(B,)`` per-sample :math:`r` in [0, 1].
        generator: Source of the draws (``None``: torch's default).

    Returns:
        ``inputs`` with every sensor modality reframed where present and zero where missing
        (other modalities are the same tensors).
    """
    batch = len(strength)
    scale = strength.float().reshape(batch, 1, 1)
    angles = strength.float() * MAX_ANGLE * (2 * torch.rand(batch, generator=generator) - 1)
    rotation = random_rotations(angles, generator)
    out = dict(inputs)
    for j, spec in enumerate(specs):
        if spec.kind != ModalityKind.SENSOR:
            continue
        windows = inputs[spec.name]
        channels = windows.shape[1]
        if channels % 3 == 0:
            groups = windows.reshape(batch, channels // 3, 3, -1)
            windows = torch.einsum("bij,bgjt->bgit", rotation, groups).reshape(windows.shape)
        gain = torch.exp(scale * GAIN_STD * torch.randn(batch, channels, 1, generator=generator))
        offset = scale * OFFSET_STD * torch.randn(batch, channels, 1, generator=generator)
        present = mask[:, j].to(windows.dtype).reshape(batch, 1, 1)
        out[spec.name] = (windows * gain + offset) * present
    return out
