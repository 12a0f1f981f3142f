r"""Probabilistic (Gaussian) embeddings and their KL divergence to the standard normal prior.

Each modality is embedded as a diagonal Gaussian :math:`\mathcal{N}(\mu, \mathrm{diag}\,
\sigma^2)` rather than a point, so the model carries a per-modality uncertainty
(probabilistic face embeddings, Shi & Jain 2019, ICCV; PCME, Chun et al. 2021, CVPR).
Sampling uses the reparameterisation trick of Kingma & Welling 2014 (ICLR, "Auto-Encoding
Variational Bayes").
"""

from __future__ import annotations

import torch
from torch import nn

LOGVAR_MIN = -8.0
r"""Lower bound of the predicted log-variance (:math:`\sigma^2 \geq e^{-8}`)."""
LOGVAR_MAX = 8.0
r"""Upper bound of the predicted log-variance (:math:`\sigma^2 \leq e^{8}`)."""


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""KL divergence of a diagonal Gaussian to the standard normal, summed over the last axis.

    .. math::
        \mathrm{KL}\big(\mathcal{N}(\mu, \mathrm{diag}\, e^{\ell}) \,\|\,
        \mathcal{N}(0, I)\big) = \tfrac12 \sum_d \big(\mu_d^2 + e^{\ell_d} - \ell_d - 1\big)

    (Kingma & Welling 2014, Appendix B). It is ``>= 0`` and ``0`` exactly at ``mu = 0``,
    ``logvar = 0``.

    Args:
        mu: Means, ``(..., D)``.
        logvar: Log-variances :math:`\ell`, same shape as ``mu``.

    Returns:
        ``(...)``: one KL value per leading index (e.g. per sample).

    Raises:
        ValueError: If the shapes differ.

    """
    if mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must have the same shape, got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}"
        )
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=-1)


class ProbabilisticHead(nn.Module):
    r"""Maps encoder features to a Gaussian embedding and a sample from it.

    With features :math:`h`, :math:`\mu = W_\mu h + b_\mu` and
    :math:`\ell = \mathrm{clamp}(W_\ell h + b_\ell, -8, 8)`. In training mode the
    reparameterised sample :math:`z = \mu + \epsilon \odot e^{\ell/2}`,
    :math:`\epsilon \sim \mathcal{N}(0, I)`, is returned; in eval mode :math:`z = \mu`, so
    evaluation is deterministic.

    Args:
        hidden_dim: Size of the input features, ``>= 1``.
        embed_dim: Size of the embedding, ``>= 1``.

    Raises:
        ValueError: If a size is below 1.

    """

    def __init__(self, hidden_dim: int, embed_dim: int) -> None:
        super().__init__()
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.mean = nn.Linear(hidden_dim, embed_dim)
        self.log_variance = nn.Linear(hidden_dim, embed_dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed ``(B, hidden_dim)`` features.

        Returns:
            ``(z, mu, logvar)``, each ``(B, embed_dim)``.

        """
        mu = self.mean(features)
        logvar = self.log_variance(features).clamp(LOGVAR_MIN, LOGVAR_MAX)
        if not self.training:
            return mu, mu, logvar
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return z, mu, logvar
